-- KPIs (offsim_common.kpis, docs/kpis.md): what the simulation does to its households, kept as
-- it happens in the users service's demand buckets, so that reading them never counts history.

-- Users service: per bucket, the restock orders its readings placed, and the product-time
-- (simulated seconds) its stock samples saw: watched products at zero, every watched product,
-- and SSDs (their number times the time since the previous sample). Retention folds old buckets
-- into the one at '-infinity' like the other sums.
ALTER TABLE ssd_demand
    ADD COLUMN restocks          bigint NOT NULL DEFAULT 0,
    ADD COLUMN empty_product_s   double precision NOT NULL DEFAULT 0,
    ADD COLUMN watched_product_s double precision NOT NULL DEFAULT 0,
    ADD COLUMN ssd_s             double precision NOT NULL DEFAULT 0;

-- Users service: when the stock was last sampled, by any replica (one row; a replica that finds
-- it locked leaves the sample to the one holding it, so no stretch of time is counted twice).
CREATE TABLE stock_sampled (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    at  timestamptz
);
INSERT INTO stock_sampled (one, at) VALUES (true, NULL);
