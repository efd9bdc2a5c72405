-- The re-publisher claims unpublished orders for a while instead of holding a connection (and a
-- row lock) across its NATS round trips; a claim that lapses (the replica died) is taken again.
ALTER TABLE product_orders ADD COLUMN publish_claimed_until timestamptz;
