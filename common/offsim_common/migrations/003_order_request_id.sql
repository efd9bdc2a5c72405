-- The request id of the HTTP request that placed the order, so an order announced later by the
-- re-publisher carries it through NATS like any other.
ALTER TABLE product_orders ADD COLUMN request_id text;
