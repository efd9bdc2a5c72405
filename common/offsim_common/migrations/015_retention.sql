-- Retention (docs/retention.md): each owner deletes what it no longer needs, in small batches
-- by an index on when the row stopped being needed, so a long run keeps a bounded table.

-- Orders service: cancelled orders by the time they were cancelled, for the deletion of those
-- past OFFSIM_ORDER_RETENTION (completed ones are read by product_orders_completed_at, 002).
CREATE INDEX product_orders_cancelled_at ON product_orders (cancelled_at)
    WHERE status = 'cancelled';

-- Users service: a delivery's row goes with its order. Only an order whose delivery is in stock
-- is ever deleted, and the row's one use was to keep a repeated orders.completed from adding
-- it twice: an event of an order no longer stored describes no order, and adds nothing. The
-- key is declared by the users service's table, so the database does the users service's part
-- of the deletion; the orders service never writes stock_deliveries itself.
ALTER TABLE stock_deliveries DROP CONSTRAINT stock_deliveries_order_id_fkey;
ALTER TABLE stock_deliveries ADD CONSTRAINT stock_deliveries_order_id_fkey
    FOREIGN KEY (order_id) REFERENCES product_orders (id) ON DELETE CASCADE;

-- Users service: reading ids by the time they were applied, for the deletion of those past
-- the horizon in which a reading can come again. A B-tree, not a BRIN: the deleted rows' space
-- is reused by new ones, and a BRIN range's bounds only ever widen, so once the table has
-- turned over every range would match "applied before the horizon" and each batch would read
-- the whole table.
CREATE INDEX ssd_readings_applied_at ON ssd_readings (applied_at);
