-- Long runs: every read of the orders stays as fast at 10 million orders as at the first one.
--
-- 1. Counters kept as the writes happen, never counted over history on a read: two ledgers of
--    delta rows, written by statement-level triggers on product_orders (one INSERT of a few
--    rows per statement, never an UPDATE of a shared row: concurrent commits never wait for
--    each other on a counter). The orders service folds each ledger's rows into one per key
--    every few seconds (counters.py); a read sums the few rows left.
-- 2. Indexes for the orders list by key (newest first, `before` an order id): each filter an
--    index range in id order.

-- Orders service: orders by status. `stored`: orders now in product_orders with that status (a
-- DELETE, the retention of finished orders, takes them off). `lifetime`: every order ever
-- placed, by its status now (a deleted order stays counted in the status it had): the
-- dashboard's counts, exact whatever retention deletes. Many rows per status; sum them.
CREATE TABLE order_counts (
    status   text NOT NULL,
    stored   bigint NOT NULL,
    lifetime bigint NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000);

-- Orders service: orders placed (by created_at) and completed (by completed_at) in each minute
-- (UTC); a DELETE changes nothing. Minutes older than a day are pruned by the fold.
CREATE TABLE order_minutes (
    minute    timestamptz NOT NULL,
    placed    bigint NOT NULL,
    completed bigint NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000);
CREATE INDEX order_minutes_minute ON order_minutes (minute);

-- Each statement's deltas, from its transition tables: inserted orders count +1. An UPDATE
-- counts its rows as they are now +1 and as they were -1, so one that moves no status, placing
-- time or completion time (a published mark, a claim) nets to nothing and writes no row. A
-- DELETE takes its orders off `stored` only: the lifetime counts and the minutes keep them.
CREATE FUNCTION count_orders_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO order_counts (status, stored, lifetime)
    SELECT status, count(*), count(*) FROM new_orders GROUP BY status;
    INSERT INTO order_minutes (minute, placed, completed)
    SELECT minute, sum(placed), sum(completed)
    FROM (SELECT date_trunc('minute', created_at, 'UTC') AS minute, 1 AS placed, 0 AS completed
          FROM new_orders
          UNION ALL
          SELECT date_trunc('minute', completed_at, 'UTC'), 0, 1
          FROM new_orders WHERE completed_at IS NOT NULL) m
    GROUP BY minute;
    RETURN NULL;
END
$$;

-- For an UPDATE or a DELETE (whose transition table of new rows does not exist: each branch
-- reads only the tables its statement has).
CREATE FUNCTION count_orders_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO order_counts (status, stored, lifetime)
        SELECT status, -count(*), 0 FROM old_orders GROUP BY status;
        RETURN NULL;
    END IF;
    INSERT INTO order_counts (status, stored, lifetime)
    SELECT status, sum(w), sum(w)
    FROM (SELECT status, 1 AS w FROM new_orders UNION ALL SELECT status, -1 FROM old_orders) c
    GROUP BY status HAVING sum(w) <> 0;
    INSERT INTO order_minutes (minute, placed, completed)
    SELECT date_trunc('minute', at, 'UTC'), sum(placed), sum(completed)
    FROM (SELECT created_at, 1, 0 FROM new_orders
          UNION ALL SELECT completed_at, 0, 1 FROM new_orders WHERE completed_at IS NOT NULL
          UNION ALL SELECT created_at, -1, 0 FROM old_orders
          UNION ALL SELECT completed_at, 0, -1 FROM old_orders WHERE completed_at IS NOT NULL)
          AS m(at, placed, completed)
    GROUP BY 1 HAVING sum(placed) <> 0 OR sum(completed) <> 0;
    RETURN NULL;
END
$$;

-- TRUNCATE empties the orders as if none had been placed (tests, benchmarks): the ledgers too.
CREATE FUNCTION count_orders_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM order_counts;
    DELETE FROM order_minutes;
    RETURN NULL;
END
$$;

CREATE TRIGGER product_orders_counted_insert AFTER INSERT ON product_orders
    REFERENCING NEW TABLE AS new_orders
    FOR EACH STATEMENT EXECUTE FUNCTION count_orders_inserted();
CREATE TRIGGER product_orders_counted_update AFTER UPDATE ON product_orders
    REFERENCING OLD TABLE AS old_orders NEW TABLE AS new_orders
    FOR EACH STATEMENT EXECUTE FUNCTION count_orders_changed();
CREATE TRIGGER product_orders_counted_delete AFTER DELETE ON product_orders
    REFERENCING OLD TABLE AS old_orders
    FOR EACH STATEMENT EXECUTE FUNCTION count_orders_changed();
CREATE TRIGGER product_orders_counted_truncate AFTER TRUNCATE ON product_orders
    FOR EACH STATEMENT EXECUTE FUNCTION count_orders_truncated();

-- The orders stored before this migration. The triggers above hold a lock on product_orders
-- that every write waits for until this commits, so no order is missed or counted twice.
WITH counted AS (
    INSERT INTO order_counts (status, stored, lifetime)
    SELECT status, count(*), count(*) FROM product_orders GROUP BY status)
INSERT INTO order_minutes (minute, placed, completed)
SELECT date_trunc('minute', m.at, 'UTC'), sum(m.placed), sum(m.completed)
FROM product_orders o, LATERAL (VALUES (o.created_at, 1, 0), (o.completed_at, 0, 1))
                           AS m(at, placed, completed)
WHERE m.at IS NOT NULL GROUP BY 1;

-- Orders service -> dashboard: the counters as sums (views named for what they mean, as in 009).
CREATE VIEW order_totals AS
    SELECT status, sum(stored)::bigint AS stored, sum(lifetime)::bigint AS lifetime
    FROM order_counts GROUP BY status;

CREATE VIEW orders_per_minute AS
    SELECT minute, sum(placed)::bigint AS placed, sum(completed)::bigint AS completed
    FROM order_minutes GROUP BY minute;

-- The orders list, newest first: `id < before` within a status or an SSD is one index range
-- in id order. The SSD's index was by placing time, which no query needs (the SSD's open
-- orders and restock checks use its ssd_id prefix); the status index by placing time stays,
-- for the reconciler's overdue pending orders.
CREATE INDEX product_orders_status_id ON product_orders (status, id DESC);
DROP INDEX product_orders_ssd;
CREATE INDEX product_orders_ssd ON product_orders (ssd_id, id DESC);
-- An SSD's orders on their way, by product: the dashboard's stock panel (and the users
-- service's `open_orders` checks) find them without reading the SSD's history.
CREATE INDEX product_orders_open ON product_orders (ssd_id, barcode)
    WHERE status IN ('pending', 'shipped');
