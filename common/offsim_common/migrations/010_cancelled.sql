-- A terminal status: the supplier rejected the order (a fault the generator injects). A
-- cancelled order is no longer open, so the SSD's restocking may order that product again.
ALTER TABLE product_orders DROP CONSTRAINT product_orders_status_check;
ALTER TABLE product_orders ADD CONSTRAINT product_orders_status_check
    CHECK (status IN ('pending', 'shipped', 'completed', 'cancelled'));
ALTER TABLE product_orders ADD COLUMN cancelled_at timestamptz;
DROP INDEX product_orders_one_open_restock;
CREATE UNIQUE INDEX product_orders_one_open_restock
    ON product_orders (ssd_id, barcode) WHERE status IN ('pending', 'shipped') AND kind = 'restock';
