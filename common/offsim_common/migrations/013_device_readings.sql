-- SSDs as devices: their readings (ssds.<id>.readings) are applied in batches by the users
-- service, each once; the demand that found no stock is counted; the backend, not the device,
-- places the restock order when a reading takes a product below its reorder point.

-- Users service: every reading applied, under the device's own id, so that a reading sent or
-- delivered again changes nothing.
CREATE TABLE ssd_readings (
    ssd_id     bigint NOT NULL,
    reading_id text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ssd_id, reading_id)
);

-- Users service: units each SSD wanted of each product, and how many of them found no stock.
ALTER TABLE product_ssds
    ADD COLUMN units_wanted bigint NOT NULL DEFAULT 0,
    ADD COLUMN units_short  bigint NOT NULL DEFAULT 0;

-- Users service: the same, summed over every SSD in 10-second buckets (the dashboard's readings
-- a second and the share of demand that found no stock, without reading every stock row).
CREATE TABLE ssd_demand (
    bucket       timestamptz PRIMARY KEY,
    readings     bigint NOT NULL,
    units_wanted bigint NOT NULL,
    units_short  bigint NOT NULL
);

-- Orders service: who placed an order. `device`: the backend, for an SSD whose reading took a
-- product below its reorder point (place_restock_orders); the orders service announces those.
ALTER TABLE product_orders
    ADD COLUMN placed_by text NOT NULL DEFAULT 'api' CHECK (placed_by IN ('api', 'device'));
CREATE INDEX product_orders_device_unannounced ON product_orders (id)
    WHERE published_at IS NULL AND placed_by = 'device';

-- Orders service -> users service: the one write another member makes to the orders, as a
-- function the orders service owns (as views are what others read). The users service calls it
-- in the transaction that applies the readings, so a stock update and its restock order commit
-- together or not at all. A product with any order on its way gets none (pending,
-- shipped, or completed but not yet added to the stock: the users service adds a delivery under
-- the lock of the same stock row, so none slips between); at most one restock
-- order is open per SSD and product (the partial unique index). The orders service is told at
-- commit (NOTIFY) and announces the new orders on orders.pending.
CREATE FUNCTION place_restock_orders(
    in_ssd_ids bigint[], in_barcodes text[], in_quantities integer[], in_request_ids text[]
) RETURNS TABLE (order_id bigint, ssd_id bigint, barcode text, quantity integer)
LANGUAGE sql VOLATILE AS $$
    WITH wanted AS (
        SELECT * FROM unnest(in_ssd_ids, in_barcodes, in_quantities, in_request_ids)
            AS w(ssd_id, barcode, quantity, request_id)),
    placed AS (
        INSERT INTO product_orders AS o (ssd_id, barcode, quantity, kind, placed_by, request_id)
        SELECT w.ssd_id, w.barcode, w.quantity, 'restock', 'device', w.request_id
        FROM wanted w
        WHERE NOT EXISTS (SELECT 1 FROM product_orders p
                          WHERE p.ssd_id = w.ssd_id AND p.barcode = w.barcode
                            AND (p.status IN ('pending', 'shipped')
                                 OR (p.status = 'completed' AND NOT p.delivery_confirmed
                                     AND NOT EXISTS (SELECT 1 FROM delivered_orders d
                                                     WHERE d.order_id = p.id))))
        ORDER BY w.ssd_id, w.barcode
        ON CONFLICT (ssd_id, barcode) WHERE status IN ('pending', 'shipped') AND kind = 'restock'
        DO NOTHING
        RETURNING o.id, o.ssd_id, o.barcode, o.quantity)
    SELECT p.id, p.ssd_id, p.barcode, p.quantity
    FROM placed p CROSS JOIN LATERAL (SELECT pg_notify('offsim_device_orders', '')) AS told
$$;
