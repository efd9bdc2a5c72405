-- A Postgres role per component (offsim_common.db_roles): the users service places restock
-- orders through place_restock_orders (013) and has no right on product_orders itself, so the
-- function runs with its owner's rights, as the interface the orders service keeps. Its
-- INSERT, the counters' triggers that INSERT fires (014) and its reads of the orders then need
-- nothing of the caller but EXECUTE.
ALTER FUNCTION place_restock_orders(bigint[], text[], integer[], text[]) SECURITY DEFINER;

-- With the owner's rights, a caller's search_path must not choose the tables and operators it
-- names: pinned to the schema it was made in, temporary objects last (pg_catalog is searched
-- first whatever the path says).
DO $$
BEGIN
    EXECUTE format(
        'ALTER FUNCTION place_restock_orders(bigint[], text[], integer[], text[]) '
        'SET search_path = %I, pg_temp', current_schema());
END
$$;

-- Every function is executable by PUBLIC unless taken back: this one only by the roles granted
-- it (the users service's).
REVOKE EXECUTE ON FUNCTION place_restock_orders(bigint[], text[], integer[], text[]) FROM PUBLIC;
