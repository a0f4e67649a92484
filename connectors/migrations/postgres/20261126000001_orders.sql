-- The orders materialized from orders.events by the SQL sink: one row per order
-- holding its latest version, and its lines. Times are epoch milliseconds (the
-- events' timestamp-millis), money is minor units of `currency`.
CREATE TABLE orders (
    order_id   TEXT    NOT NULL PRIMARY KEY,
    buyer_id   TEXT    NOT NULL,
    seller_id  TEXT    NOT NULL,
    status     TEXT    NOT NULL,
    total      BIGINT  NOT NULL,
    currency   TEXT    NOT NULL,
    reason     TEXT    NULL,
    version    BIGINT  NOT NULL,
    updated_at BIGINT  NOT NULL
);
CREATE INDEX orders_by_buyer ON orders (buyer_id, updated_at);
CREATE INDEX orders_by_seller ON orders (seller_id, updated_at);

CREATE TABLE order_items (
    order_id   TEXT    NOT NULL REFERENCES orders (order_id) ON DELETE CASCADE,
    line_no    INTEGER NOT NULL,
    product_id TEXT    NOT NULL,
    quantity   INTEGER NOT NULL,
    unit_price BIGINT  NOT NULL,
    PRIMARY KEY (order_id, line_no)
);
