-- Orders service -> users service: the orders whose delivery may reach an SSD's stock, every
-- placed order the supplier did not cancel. A `completed` event for a cancelled order (possible
-- only if the reject share changed while the supplier was handling it) adds nothing to stock.
CREATE VIEW deliverable_orders AS
    SELECT id AS order_id, ssd_id, barcode, quantity
    FROM product_orders
    WHERE status <> 'cancelled';

-- It replaces this one, which counted cancelled orders too.
DROP VIEW placed_orders;
