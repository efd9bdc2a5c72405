-- The reconciler re-announces an order whose next transition is overdue; a replica claims the
-- row until then, so each overdue order is re-announced by one replica once per stage period.
ALTER TABLE product_orders ADD COLUMN reconcile_claimed_until timestamptz;
