-- What one service reads of another's tables, named for what it means (docs/architecture.md):
-- the owner may change its tables as long as these views keep their columns and meaning.

-- Orders service -> users service: the orders an SSD is waiting for, and every order as placed
-- (a delivery is added to stock only for an order that exists as described).
CREATE VIEW open_orders AS
    SELECT id AS order_id, ssd_id, barcode, kind, status
    FROM product_orders
    WHERE status IN ('pending', 'shipped');

CREATE VIEW placed_orders AS
    SELECT id AS order_id, ssd_id, barcode, quantity
    FROM product_orders;

-- Users service -> orders service: who owns an SSD, what it watches, what reached its stock.
CREATE VIEW ssd_owners AS
    SELECT id AS ssd_id, user_id
    FROM ssds;

CREATE VIEW watched_products AS
    SELECT ssd_id, barcode
    FROM product_ssds;

CREATE VIEW delivered_orders AS
    SELECT order_id
    FROM stock_deliveries;

-- Users service -> every API: whose bearer token this is (only its hash is stored).
CREATE VIEW bearer_tokens AS
    SELECT token_hash, user_id
    FROM api_tokens;
