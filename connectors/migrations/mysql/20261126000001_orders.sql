-- The orders materialized from orders.events by the SQL sink: one row per order
-- holding its latest version, and its lines. Times are epoch milliseconds (the
-- events' timestamp-millis), money is minor units of `currency`.
-- Ids compare byte for byte (utf8mb4_bin), as on PostgreSQL and SQLite: with the
-- default case-insensitive collation `A1` and `a1` would be one order.
CREATE TABLE orders (
    order_id   VARCHAR(255) COLLATE utf8mb4_bin NOT NULL PRIMARY KEY,
    buyer_id   VARCHAR(255) COLLATE utf8mb4_bin NOT NULL,
    seller_id  VARCHAR(255) COLLATE utf8mb4_bin NOT NULL,
    status     VARCHAR(32)  NOT NULL,
    total      BIGINT       NOT NULL,
    currency   VARCHAR(16)  NOT NULL,
    reason     TEXT         NULL,
    version    BIGINT       NOT NULL,
    updated_at BIGINT       NOT NULL,
    INDEX orders_by_buyer (buyer_id, updated_at),
    INDEX orders_by_seller (seller_id, updated_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE order_items (
    order_id   VARCHAR(255) COLLATE utf8mb4_bin NOT NULL,
    line_no    INT          NOT NULL,
    product_id VARCHAR(255) COLLATE utf8mb4_bin NOT NULL,
    quantity   INT          NOT NULL,
    unit_price BIGINT       NOT NULL,
    PRIMARY KEY (order_id, line_no),
    CONSTRAINT order_items_order FOREIGN KEY (order_id) REFERENCES orders (order_id)
        ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
