-- Repeat orders are orders: any number of open orders per SSD and product. Only the SSD's own
-- restocking keeps one open order per SSD and product, so only restock orders are unique.
ALTER TABLE product_orders
    ADD COLUMN kind text NOT NULL DEFAULT 'order' CHECK (kind IN ('order', 'restock'));
DROP INDEX product_orders_one_open;
CREATE UNIQUE INDEX product_orders_one_open_restock
    ON product_orders (ssd_id, barcode) WHERE status <> 'completed' AND kind = 'restock';
