-- The offsim schema. Products come from Open Food Facts (ODbL); the rest is simulated.

CREATE TABLE products (
    barcode           text PRIMARY KEY,
    name              text NOT NULL,
    quantity          text,
    image_url         text,
    energy_100g       double precision,
    energy_serving    double precision,
    nova_group        smallint CHECK (nova_group BETWEEN 1 AND 4),
    nutriscore_score  integer,
    nutriscore_grade  text,
    fat_level         text,
    saturated_fat_level text,
    sugars_level      text,
    salt_level        text,
    categories        text[] NOT NULL DEFAULT '{}',
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE brands (
    tag text PRIMARY KEY
);

CREATE TABLE product_brands (
    barcode text NOT NULL REFERENCES products (barcode) ON DELETE CASCADE,
    tag     text NOT NULL REFERENCES brands (tag),
    PRIMARY KEY (barcode, tag)
);

CREATE TABLE users (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    first_name    text NOT NULL,
    last_name     text NOT NULL,
    email         text NOT NULL UNIQUE,
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ssds (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    mac_address text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ssds_user_id ON ssds (user_id);

-- The stock an SSD watches: below reorder_point it orders back up to capacity.
CREATE TABLE product_ssds (
    ssd_id        bigint NOT NULL REFERENCES ssds (id) ON DELETE CASCADE,
    barcode       text NOT NULL REFERENCES products (barcode),
    quantity      integer NOT NULL CHECK (quantity >= 0),
    reorder_point integer NOT NULL CHECK (reorder_point >= 0),
    capacity      integer NOT NULL CHECK (capacity > 0),
    PRIMARY KEY (ssd_id, barcode)
);

CREATE TABLE product_orders (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ssd_id       bigint NOT NULL REFERENCES ssds (id),
    barcode      text NOT NULL REFERENCES products (barcode),
    quantity     integer NOT NULL CHECK (quantity > 0),
    status       text NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'shipped', 'completed')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    shipped_at   timestamptz,
    completed_at timestamptz,
    -- Set once orders.pending is acknowledged by JetStream; NULL rows are re-published.
    published_at timestamptz
);
CREATE INDEX product_orders_ssd ON product_orders (ssd_id, created_at DESC);
CREATE INDEX product_orders_status ON product_orders (status, created_at DESC);
CREATE INDEX product_orders_unpublished ON product_orders (created_at) WHERE published_at IS NULL;
-- One open order per SSD and product at a time.
CREATE UNIQUE INDEX product_orders_one_open
    ON product_orders (ssd_id, barcode) WHERE status <> 'completed';

-- Deliveries already added to stock, so a redelivered orders.completed adds nothing twice.
CREATE TABLE stock_deliveries (
    order_id     bigint PRIMARY KEY REFERENCES product_orders (id),
    delivered_at timestamptz NOT NULL DEFAULT now()
);

-- Where an interrupted OFF API extraction resumes, per search query.
CREATE TABLE etl_positions (
    source     text PRIMARY KEY,
    next_page  integer NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
