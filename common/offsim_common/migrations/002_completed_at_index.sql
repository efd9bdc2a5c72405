-- The dashboard's throughput chart counts completions per minute over the last minutes.
CREATE INDEX product_orders_completed_at
    ON product_orders (completed_at) WHERE completed_at IS NOT NULL;
