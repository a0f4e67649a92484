//! The SQL sink's database side: the `orders` and `order_items` tables materialized
//! from `orders.events` on PostgreSQL, MySQL/MariaDB or SQLite, and the reads the
//! edges make of them.
//!
//! [`OrdersSql::connect`] picks the backend from the URL, opens a pool and applies the
//! embedded migrations (`connectors/migrations/<backend>/`). [`OrdersSql::apply`]
//! writes a batch of events in one transaction, so a Kafka consumer can commit its
//! offsets once the call returns and a crash before that replays the whole batch.
//! Replays are harmless by construction:
//! - the `orders` row of an order is upserted with a version guard: an event whose
//!   version is not greater than the stored one changes nothing, so repeated and
//!   out-of-order events never move an order back;
//! - `order_items` rows are keyed `(order_id, line_no)` and only inserted when
//!   missing: the lines of an order are fixed when it is placed.
//!
//! Each backend gets its own pool and its own SQL (`ON CONFLICT … WHERE` on
//! PostgreSQL and SQLite, `ON DUPLICATE KEY UPDATE` with `IF` on MySQL); the code
//! that runs them is generic over the sqlx driver.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use orderflow_pipelines::records::{OrderEvent, OrderItem, OrderStatus};
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Row, Type};

/// Connections per pool: the sink writes one batch at a time and the edges read.
const MAX_CONNECTIONS: u32 = 8;
/// How long a caller waits for a free connection (or a new one) before an error.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long SQLite waits on a lock held by another connection before `SQLITE_BUSY`.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The database kinds the sink writes to, chosen by the URL's scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SqlBackend {
    /// `postgres://` or `postgresql://`.
    Postgres,
    /// `mysql://` or `mariadb://` (MariaDB speaks the MySQL protocol).
    MySql,
    /// `sqlite://PATH` or `sqlite:PATH`; the file is created when missing.
    Sqlite,
}

impl SqlBackend {
    /// The backend a database URL names, or [`SqlSinkError::UnsupportedUrl`].
    pub fn from_url(url: &str) -> Result<Self, SqlSinkError> {
        let scheme = url
            .split_once(':')
            .map(|(scheme, _)| scheme.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("postgres" | "postgresql") => Ok(Self::Postgres),
            Some("mysql" | "mariadb") => Ok(Self::MySql),
            Some("sqlite") => Ok(Self::Sqlite),
            _ => Err(SqlSinkError::UnsupportedUrl { url: redact(url) }),
        }
    }
}

impl fmt::Display for SqlBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Postgres => "PostgreSQL",
            Self::MySql => "MySQL",
            Self::Sqlite => "SQLite",
        })
    }
}

/// What went wrong, on which database. Every variant names the backend and the
/// database (its URL without password), and says what the sink was doing.
#[derive(Debug, thiserror::Error)]
pub enum SqlSinkError {
    /// The URL's scheme is none of the supported ones.
    #[error(
        "SQL sink: unsupported database URL `{url}`: expected postgres://, postgresql://, \
         mysql://, mariadb:// or sqlite://"
    )]
    UnsupportedUrl {
        /// The URL, password removed.
        url: String,
    },
    /// The URL has a supported scheme but the driver cannot use it.
    #[error("SQL sink: bad {backend} URL `{target}`: {error}")]
    BadUrl {
        /// Which database kind.
        backend: SqlBackend,
        /// The URL, password removed.
        target: String,
        /// The driver's complaint.
        error: sqlx::Error,
    },
    /// The directory for a new SQLite file could not be created.
    #[error("SQL sink: cannot create the directory of the SQLite file {target}: {error}")]
    CreateDir {
        /// The file's path.
        target: String,
        /// Why.
        error: std::io::Error,
    },
    /// No connection could be made.
    #[error("SQL sink: cannot connect to {backend} at {target}: {error}")]
    Connect {
        /// Which database kind.
        backend: SqlBackend,
        /// The database, password removed.
        target: String,
        /// The driver's error.
        error: sqlx::Error,
    },
    /// The embedded migrations could not be applied.
    #[error("SQL sink: migrating {backend} at {target} failed: {error}")]
    Migrate {
        /// Which database kind.
        backend: SqlBackend,
        /// The database, password removed.
        target: String,
        /// The migrator's error.
        error: MigrateError,
    },
    /// A statement or transaction failed.
    #[error("SQL sink: {operation} on {backend} at {target} failed: {error}")]
    Query {
        /// Which database kind.
        backend: SqlBackend,
        /// The database, password removed.
        target: String,
        /// What the sink was doing (`writing a batch of 12 events`, `reading order o-1`).
        operation: String,
        /// The driver's error.
        error: sqlx::Error,
    },
    /// A row read back holds something no event could have written.
    #[error("SQL sink: {backend} at {target} holds a bad row: {detail}")]
    BadRow {
        /// Which database kind.
        backend: SqlBackend,
        /// The database, password removed.
        target: String,
        /// What is wrong with it.
        detail: String,
    },
    /// An event cannot be stored (more lines than a line number holds).
    #[error("SQL sink: cannot store order {order_id}: {detail}")]
    BadEvent {
        /// The order.
        order_id: String,
        /// Why.
        detail: String,
    },
}

impl SqlSinkError {
    /// Whether trying the same call again later may succeed: the server was
    /// unreachable or busy, or the transaction lost a deadlock or a serialization
    /// conflict. Anything else (bad URL, failed migration, a rejected statement)
    /// needs an operator.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect { error, .. } | Self::Query { error, .. } => transient(error),
            Self::Migrate {
                error: MigrateError::Execute(error),
                ..
            } => transient(error),
            _ => false,
        }
    }
}

/// Whether a driver error is worth a retry.
fn transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            // SQLSTATE classes: 08 connection exception, 40001 serialization
            // failure (MySQL's deadlock too), 40P01 deadlock, 53 insufficient
            // resources, 57P01-03 server shutting down.
            let code = db.code().unwrap_or_default();
            let sqlstate_transient = code.starts_with("08")
                || code == "40001"
                || code == "40P01"
                || code.starts_with("53")
                || matches!(&*code, "57P01" | "57P02" | "57P03");
            // MySQL: 1205 lock wait timeout, 1213 deadlock, 1040 too many
            // connections. SQLite: primary result codes 5 BUSY and 6 LOCKED.
            let mysql_transient = db
                .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                .is_some_and(|e| matches!(e.number(), 1040 | 1205 | 1213));
            // SQLite reports its (extended) result code as the code.
            let sqlite_transient = db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some()
                && code.parse::<i32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6));
            sqlstate_transient || mysql_transient || sqlite_transient
        }
        _ => false,
    }
}

/// An order as the sink stored it: its latest version and its lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRow {
    /// Order id.
    pub order_id: String,
    /// Buyer's user id.
    pub buyer_id: String,
    /// Seller's user id.
    pub seller_id: String,
    /// Status after the latest event.
    pub status: OrderStatus,
    /// Sum of the lines, minor units of `currency`.
    pub total: i64,
    /// ISO 4217 currency.
    pub currency: String,
    /// Why cancelled or rejected, else `None`.
    pub reason: Option<String>,
    /// Version of the latest event applied.
    pub version: i64,
    /// `at` of that event, epoch milliseconds.
    pub updated_at: i64,
    /// The order lines in order; empty when no event carried them yet.
    pub items: Vec<OrderItem>,
}

/// The `orders` tables on one database: connect, apply batches of
/// [`OrderEvent`]s, read orders back. Cheap to clone (the pool is shared).
#[derive(Debug, Clone)]
pub struct OrdersSql {
    pool: Backend,
    target: String,
}

/// One pool per driver, so each backend runs with its own types and SQL.
#[derive(Debug, Clone)]
enum Backend {
    Postgres(PgPool),
    MySql(MySqlPool),
    Sqlite(SqlitePool),
}

static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");
static MYSQL_MIGRATIONS: Migrator = sqlx::migrate!("migrations/mysql");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");

impl OrdersSql {
    /// Connects to the database `url` names (`postgres://`, `postgresql://`,
    /// `mysql://`, `mariadb://`, `sqlite://PATH`) and brings its schema up to date.
    /// A SQLite file (and its directory) is created when missing. Running it again
    /// on a migrated database changes nothing.
    pub async fn connect(url: &str) -> Result<Self, SqlSinkError> {
        let backend = SqlBackend::from_url(url)?;
        let target = redact(url);
        let bad_url = |error| SqlSinkError::BadUrl {
            backend,
            target: target.clone(),
            error,
        };
        let cannot_connect = |error| SqlSinkError::Connect {
            backend,
            target: target.clone(),
            error,
        };
        let migrate_failed = |error| SqlSinkError::Migrate {
            backend,
            target: target.clone(),
            error,
        };
        let pool = match backend {
            SqlBackend::Postgres => {
                let options = PgConnectOptions::from_str(url).map_err(bad_url)?;
                let pool = PgPoolOptions::new()
                    .max_connections(MAX_CONNECTIONS)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_with(options)
                    .await
                    .map_err(cannot_connect)?;
                migrator(&POSTGRES_MIGRATIONS)
                    .run(&pool)
                    .await
                    .map_err(migrate_failed)?;
                Backend::Postgres(pool)
            }
            SqlBackend::MySql => {
                // The driver reads the URL's parts, not its scheme.
                let options = MySqlConnectOptions::from_str(url).map_err(bad_url)?;
                let pool = MySqlPoolOptions::new()
                    .max_connections(MAX_CONNECTIONS)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_with(options)
                    .await
                    .map_err(cannot_connect)?;
                migrator(&MYSQL_MIGRATIONS)
                    .run(&pool)
                    .await
                    .map_err(migrate_failed)?;
                Backend::MySql(pool)
            }
            SqlBackend::Sqlite => {
                let options = SqliteConnectOptions::from_str(url)
                    .map_err(bad_url)?
                    .create_if_missing(true)
                    .foreign_keys(true)
                    // Readers (the edges) do not block the writer, nor it them.
                    .journal_mode(SqliteJournalMode::Wal)
                    .busy_timeout(SQLITE_BUSY_TIMEOUT);
                create_parent_dir(options.get_filename())
                    .await
                    .map_err(|error| SqlSinkError::CreateDir {
                        target: target.clone(),
                        error,
                    })?;
                let pool = SqlitePoolOptions::new()
                    .max_connections(MAX_CONNECTIONS)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_with(options)
                    .await
                    .map_err(cannot_connect)?;
                migrator(&SQLITE_MIGRATIONS)
                    .run(&pool)
                    .await
                    .map_err(migrate_failed)?;
                Backend::Sqlite(pool)
            }
        };
        Ok(Self { pool, target })
    }

    /// Which kind of database this is.
    pub fn backend(&self) -> SqlBackend {
        match self.pool {
            Backend::Postgres(_) => SqlBackend::Postgres,
            Backend::MySql(_) => SqlBackend::MySql,
            Backend::Sqlite(_) => SqlBackend::Sqlite,
        }
    }

    /// The database's URL without its password, for logs.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Applies a batch of events in one transaction: either all of it is stored or
    /// none. For each order the newest version in the batch is upserted (a stored
    /// version that is newer or equal wins) and its lines are inserted when an event
    /// carries them and they are not stored yet. Events may come in any order and
    /// any number of times.
    pub async fn apply(&self, events: &[OrderEvent]) -> Result<(), SqlSinkError> {
        if events.is_empty() {
            return Ok(());
        }
        let batch = Batch::collapse(events)?;
        let result = match &self.pool {
            Backend::Postgres(pool) => write_batch(pool, &POSTGRES, &batch).await,
            Backend::MySql(pool) => write_batch(pool, &MYSQL, &batch).await,
            Backend::Sqlite(pool) => write_batch(pool, &SQLITE, &batch).await,
        };
        result.map_err(|error| {
            self.query_error(
                format!(
                    "writing a batch of {} events ({} orders)",
                    events.len(),
                    batch.orders.len()
                ),
                error,
            )
        })
    }

    /// The order with this id, or `None` when no event of it was applied.
    pub async fn order(&self, order_id: &str) -> Result<Option<OrderRow>, SqlSinkError> {
        let rows = self
            .select(Select::Order, order_id, 1)
            .await
            .map_err(|error| self.query_error(format!("reading order {order_id}"), error))?;
        Ok(self.assemble(rows)?.into_iter().next())
    }

    /// The buyer's orders, most recently updated first, at most `limit`.
    pub async fn orders_of_buyer(
        &self,
        buyer_id: &str,
        limit: u32,
    ) -> Result<Vec<OrderRow>, SqlSinkError> {
        let rows = self
            .select(Select::Buyer, buyer_id, limit)
            .await
            .map_err(|error| {
                self.query_error(format!("reading the orders of buyer {buyer_id}"), error)
            })?;
        self.assemble(rows)
    }

    /// The seller's orders, most recently updated first, at most `limit`.
    pub async fn orders_of_seller(
        &self,
        seller_id: &str,
        limit: u32,
    ) -> Result<Vec<OrderRow>, SqlSinkError> {
        let rows = self
            .select(Select::Seller, seller_id, limit)
            .await
            .map_err(|error| {
                self.query_error(format!("reading the orders of seller {seller_id}"), error)
            })?;
        self.assemble(rows)
    }

    /// Closes the pool: waits for connections in use to come back, then closes
    /// them all (SQLite checkpoints its write-ahead log).
    pub async fn close(&self) {
        match &self.pool {
            Backend::Postgres(pool) => pool.close().await,
            Backend::MySql(pool) => pool.close().await,
            Backend::Sqlite(pool) => pool.close().await,
        }
    }

    async fn select(
        &self,
        select: Select,
        key: &str,
        limit: u32,
    ) -> Result<Vec<JoinedRow>, sqlx::Error> {
        match &self.pool {
            Backend::Postgres(pool) => read_rows(pool, POSTGRES.select(select), key, limit).await,
            Backend::MySql(pool) => read_rows(pool, MYSQL.select(select), key, limit).await,
            Backend::Sqlite(pool) => read_rows(pool, SQLITE.select(select), key, limit).await,
        }
    }

    /// Folds the joined rows (one per order line, or one for an order without
    /// lines), which come ordered by order then line, into orders.
    fn assemble(&self, rows: Vec<JoinedRow>) -> Result<Vec<OrderRow>, SqlSinkError> {
        let mut orders: Vec<OrderRow> = Vec::new();
        for row in rows {
            let same_order = orders
                .last()
                .is_some_and(|last| last.order_id == row.order_id);
            if !same_order {
                let status = parse_status(&row.status).ok_or_else(|| {
                    self.bad_row(format!(
                        "order {} has the unknown status {:?}",
                        row.order_id, row.status
                    ))
                })?;
                orders.push(OrderRow {
                    order_id: row.order_id.clone(),
                    buyer_id: row.buyer_id,
                    seller_id: row.seller_id,
                    status,
                    total: row.total,
                    currency: row.currency,
                    reason: row.reason,
                    version: row.version,
                    updated_at: row.updated_at,
                    items: Vec::new(),
                });
            }
            match (row.product_id, row.quantity, row.unit_price) {
                (Some(product_id), Some(quantity), Some(unit_price)) => {
                    if let Some(order) = orders.last_mut() {
                        order.items.push(OrderItem {
                            product_id,
                            quantity,
                            unit_price,
                        });
                    }
                }
                (None, None, None) => {}
                _ => {
                    return Err(
                        self.bad_row(format!("order {} has an incomplete line", row.order_id))
                    );
                }
            }
        }
        Ok(orders)
    }

    fn query_error(&self, operation: String, error: sqlx::Error) -> SqlSinkError {
        SqlSinkError::Query {
            backend: self.backend(),
            target: self.target.clone(),
            operation,
            error,
        }
    }

    fn bad_row(&self, detail: String) -> SqlSinkError {
        SqlSinkError::BadRow {
            backend: self.backend(),
            target: self.target.clone(),
            detail,
        }
    }
}

/// The embedded migrations, tolerant of versions it does not know: during a
/// rolling upgrade a newer orderflow may already have migrated the database
/// further, and the older one must still start.
fn migrator(embedded: &Migrator) -> Migrator {
    let mut migrator = Migrator {
        migrations: embedded.migrations.clone(),
        ..Migrator::DEFAULT
    };
    migrator.set_ignore_missing(true);
    migrator
}

/// Creates the directory a SQLite file goes in, when it has one and it is missing.
async fn create_parent_dir(file: &Path) -> std::io::Result<()> {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && file != Path::new(":memory:") => {
            tokio::fs::create_dir_all(dir).await
        }
        _ => Ok(()),
    }
}

/// The URL with its password and query removed, for messages.
fn redact(url: &str) -> String {
    let without_query = url.split(['?', '#']).next().unwrap_or_default();
    let Some((scheme, rest)) = without_query.split_once("://") else {
        return without_query.to_string();
    };
    let (authority, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}@{host}{path}")
        }
        None => without_query.to_string(),
    }
}

/// The name an [`OrderStatus`] is stored under: its Avro symbol.
fn status_name(status: OrderStatus) -> &'static str {
    match status {
        OrderStatus::Ordered => "ORDERED",
        OrderStatus::Paid => "PAID",
        OrderStatus::Cancelled => "CANCELLED",
        OrderStatus::Refunded => "REFUNDED",
        OrderStatus::Rejected => "REJECTED",
    }
}

fn parse_status(name: &str) -> Option<OrderStatus> {
    [
        OrderStatus::Ordered,
        OrderStatus::Paid,
        OrderStatus::Cancelled,
        OrderStatus::Refunded,
        OrderStatus::Rejected,
    ]
    .into_iter()
    .find(|status| status_name(*status) == name)
}

/// A batch reduced to what the database needs: per order, the newest event and
/// the first lines seen.
struct Batch<'a> {
    /// By order id, so every transaction locks rows in the same order and two
    /// sinks writing the same orders (a rebalance overlap) cannot deadlock.
    orders: BTreeMap<&'a str, Pending<'a>>,
}

/// One order's share of a batch.
struct Pending<'a> {
    /// The event with the highest version.
    newest: &'a OrderEvent,
    /// The lines, numbered from 1, of the first event that carries any.
    items: Vec<(i32, &'a OrderItem)>,
}

impl<'a> Batch<'a> {
    fn collapse(events: &'a [OrderEvent]) -> Result<Self, SqlSinkError> {
        let mut orders: BTreeMap<&'a str, Pending<'a>> = BTreeMap::new();
        for event in events {
            let pending = orders
                .entry(event.order_id.as_str())
                .or_insert_with(|| Pending {
                    newest: event,
                    items: Vec::new(),
                });
            if event.version > pending.newest.version {
                pending.newest = event;
            }
            if pending.items.is_empty() && !event.items.is_empty() {
                pending.items = numbered(event)?;
            }
        }
        Ok(Self { orders })
    }
}

fn numbered(event: &OrderEvent) -> Result<Vec<(i32, &OrderItem)>, SqlSinkError> {
    event
        .items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let line = i32::try_from(index + 1).map_err(|_| SqlSinkError::BadEvent {
                order_id: event.order_id.clone(),
                detail: format!("{} lines do not fit a line number", event.items.len()),
            })?;
            Ok((line, item))
        })
        .collect()
}

/// The SQL of one backend.
struct Dialect {
    /// Opens the write transaction.
    begin: &'static str,
    /// Insert or, when the stored version is older, replace an order. Parameters:
    /// order_id, buyer_id, seller_id, status, total, currency, reason, version,
    /// updated_at.
    upsert_order: &'static str,
    /// Insert one line unless it is there. Parameters: order_id, line_no,
    /// product_id, quantity, unit_price.
    insert_item: &'static str,
    /// One order and its lines. Parameters: order_id, limit.
    select_order: &'static str,
    /// A buyer's orders and their lines. Parameters: buyer_id, limit.
    select_buyer: &'static str,
    /// A seller's orders and their lines. Parameters: seller_id, limit.
    select_seller: &'static str,
}

#[derive(Debug, Clone, Copy)]
enum Select {
    Order,
    Buyer,
    Seller,
}

impl Dialect {
    fn select(&self, select: Select) -> &'static str {
        match select {
            Select::Order => self.select_order,
            Select::Buyer => self.select_buyer,
            Select::Seller => self.select_seller,
        }
    }
}

/// Orders first (newest update first, ties by id), then each order's lines; the
/// limit applies to orders, not lines. One statement, so one consistent snapshot.
macro_rules! select_orders {
    ($id:literal, $buyer:literal, $seller:literal, $product:literal, $filter:literal, $limit:literal) => {
        concat!(
            "SELECT ",
            $id,
            " AS order_id, ",
            $buyer,
            " AS buyer_id, ",
            $seller,
            " AS seller_id, ",
            "o.status, o.total, o.currency, o.reason, o.version, o.updated_at, ",
            $product,
            " AS product_id, i.quantity, i.unit_price ",
            "FROM (SELECT * FROM orders WHERE ",
            $filter,
            " ORDER BY updated_at DESC, order_id LIMIT ",
            $limit,
            ") o ",
            "LEFT JOIN order_items i ON i.order_id = o.order_id ",
            "ORDER BY o.updated_at DESC, o.order_id, i.line_no"
        )
    };
}

/// PostgreSQL: numbered parameters; `ON CONFLICT … DO UPDATE … WHERE` skips the
/// update (and leaves the row alone) when the stored version is not older.
static POSTGRES: Dialect = Dialect {
    begin: "BEGIN",
    upsert_order: "INSERT INTO orders \
        (order_id, buyer_id, seller_id, status, total, currency, reason, version, updated_at) \
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
        ON CONFLICT (order_id) DO UPDATE SET \
        buyer_id = excluded.buyer_id, seller_id = excluded.seller_id, \
        status = excluded.status, total = excluded.total, currency = excluded.currency, \
        reason = excluded.reason, version = excluded.version, updated_at = excluded.updated_at \
        WHERE orders.version < excluded.version",
    insert_item: "INSERT INTO order_items (order_id, line_no, product_id, quantity, unit_price) \
        VALUES ($1, $2, $3, $4, $5) ON CONFLICT (order_id, line_no) DO NOTHING",
    select_order: select_orders!(
        "o.order_id",
        "o.buyer_id",
        "o.seller_id",
        "i.product_id",
        "order_id = $1",
        "$2"
    ),
    select_buyer: select_orders!(
        "o.order_id",
        "o.buyer_id",
        "o.seller_id",
        "i.product_id",
        "buyer_id = $1",
        "$2"
    ),
    select_seller: select_orders!(
        "o.order_id",
        "o.buyer_id",
        "o.seller_id",
        "i.product_id",
        "seller_id = $1",
        "$2"
    ),
};

/// SQLite (3.24+ upsert): the PostgreSQL statements with `?` parameters. The write
/// transaction takes the write lock when it begins: a deferred one would read a
/// snapshot first, and if another writer commits before it upgrades, SQLite fails
/// it with `SQLITE_BUSY_SNAPSHOT` instead of waiting.
static SQLITE: Dialect = Dialect {
    begin: "BEGIN IMMEDIATE",
    upsert_order: "INSERT INTO orders \
        (order_id, buyer_id, seller_id, status, total, currency, reason, version, updated_at) \
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
        ON CONFLICT (order_id) DO UPDATE SET \
        buyer_id = excluded.buyer_id, seller_id = excluded.seller_id, \
        status = excluded.status, total = excluded.total, currency = excluded.currency, \
        reason = excluded.reason, version = excluded.version, updated_at = excluded.updated_at \
        WHERE orders.version < excluded.version",
    insert_item: "INSERT INTO order_items (order_id, line_no, product_id, quantity, unit_price) \
        VALUES (?, ?, ?, ?, ?) ON CONFLICT (order_id, line_no) DO NOTHING",
    select_order: select_orders!(
        "o.order_id",
        "o.buyer_id",
        "o.seller_id",
        "i.product_id",
        "order_id = ?",
        "?"
    ),
    select_buyer: select_orders!(
        "o.order_id",
        "o.buyer_id",
        "o.seller_id",
        "i.product_id",
        "buyer_id = ?",
        "?"
    ),
    select_seller: select_orders!(
        "o.order_id",
        "o.buyer_id",
        "o.seller_id",
        "i.product_id",
        "seller_id = ?",
        "?"
    ),
};

/// MySQL/MariaDB: `ON DUPLICATE KEY UPDATE` has no WHERE, so every column keeps
/// its value unless the incoming version is newer. MySQL assigns left to right and
/// later assignments see earlier ones, so `version` must come last: the guards
/// before it compare against the stored version. `VALUES(col)` (not the 8.0 row
/// alias) because MariaDB only knows that form. The ids are `utf8mb4_bin`, which
/// the protocol flags as binary; the selects cast them back to text.
static MYSQL: Dialect = Dialect {
    begin: "BEGIN",
    upsert_order: "INSERT INTO orders \
        (order_id, buyer_id, seller_id, status, total, currency, reason, version, updated_at) \
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
        ON DUPLICATE KEY UPDATE \
        buyer_id = IF(VALUES(version) > version, VALUES(buyer_id), buyer_id), \
        seller_id = IF(VALUES(version) > version, VALUES(seller_id), seller_id), \
        status = IF(VALUES(version) > version, VALUES(status), status), \
        total = IF(VALUES(version) > version, VALUES(total), total), \
        currency = IF(VALUES(version) > version, VALUES(currency), currency), \
        reason = IF(VALUES(version) > version, VALUES(reason), reason), \
        updated_at = IF(VALUES(version) > version, VALUES(updated_at), updated_at), \
        version = GREATEST(version, VALUES(version))",
    insert_item: "INSERT INTO order_items (order_id, line_no, product_id, quantity, unit_price) \
        VALUES (?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE order_id = order_id",
    select_order: select_orders!(
        "CAST(o.order_id AS CHAR)",
        "CAST(o.buyer_id AS CHAR)",
        "CAST(o.seller_id AS CHAR)",
        "CAST(i.product_id AS CHAR)",
        "order_id = ?",
        "?"
    ),
    select_buyer: select_orders!(
        "CAST(o.order_id AS CHAR)",
        "CAST(o.buyer_id AS CHAR)",
        "CAST(o.seller_id AS CHAR)",
        "CAST(i.product_id AS CHAR)",
        "buyer_id = ?",
        "?"
    ),
    select_seller: select_orders!(
        "CAST(o.order_id AS CHAR)",
        "CAST(o.buyer_id AS CHAR)",
        "CAST(o.seller_id AS CHAR)",
        "CAST(i.product_id AS CHAR)",
        "seller_id = ?",
        "?"
    ),
};

/// Writes a collapsed batch in one transaction: every order row first (the lines
/// reference them), then the lines. Dropping the transaction on an error rolls it
/// back.
async fn write_batch<DB>(
    pool: &Pool<DB>,
    dialect: &Dialect,
    batch: &Batch<'_>,
) -> Result<(), sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> i32: Encode<'q, DB> + Type<DB>,
{
    let mut tx = pool.begin_with(dialect.begin).await?;
    for pending in batch.orders.values() {
        let event = pending.newest;
        sqlx::query(dialect.upsert_order)
            .bind(event.order_id.as_str())
            .bind(event.buyer_id.as_str())
            .bind(event.seller_id.as_str())
            .bind(status_name(event.status))
            .bind(event.total)
            .bind(event.currency.as_str())
            .bind(event.reason.as_deref())
            .bind(event.version)
            .bind(event.at)
            .execute(&mut *tx)
            .await?;
    }
    for (order_id, pending) in &batch.orders {
        for (line, item) in &pending.items {
            sqlx::query(dialect.insert_item)
                .bind(*order_id)
                .bind(*line)
                .bind(item.product_id.as_str())
                .bind(item.quantity)
                .bind(item.unit_price)
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await
}

/// One row of a select: an order's columns and one of its lines (all `None` for an
/// order without lines).
struct JoinedRow {
    order_id: String,
    buyer_id: String,
    seller_id: String,
    status: String,
    total: i64,
    currency: String,
    reason: Option<String>,
    version: i64,
    updated_at: i64,
    product_id: Option<String>,
    quantity: Option<i32>,
    unit_price: Option<i64>,
}

async fn read_rows<DB>(
    pool: &Pool<DB>,
    sql: &'static str,
    key: &str,
    limit: u32,
) -> Result<Vec<JoinedRow>, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> i64: Decode<'r, DB>,
    for<'r> i32: Decode<'r, DB> + Type<DB>,
    &'static str: ColumnIndex<DB::Row>,
{
    let rows = sqlx::query(sql)
        .bind(key)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|row| {
            Ok(JoinedRow {
                order_id: row.try_get("order_id")?,
                buyer_id: row.try_get("buyer_id")?,
                seller_id: row.try_get("seller_id")?,
                status: row.try_get("status")?,
                total: row.try_get("total")?,
                currency: row.try_get("currency")?,
                reason: row.try_get("reason")?,
                version: row.try_get("version")?,
                updated_at: row.try_get("updated_at")?,
                product_id: row.try_get("product_id")?,
                quantity: row.try_get("quantity")?,
                unit_price: row.try_get("unit_price")?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_pick_backends_and_others_are_refused() {
        for (url, backend) in [
            ("postgres://u:p@h/db", SqlBackend::Postgres),
            ("postgresql://h/db", SqlBackend::Postgres),
            ("mysql://u:p@h:3306/db", SqlBackend::MySql),
            ("MariaDB://h/db", SqlBackend::MySql),
            ("sqlite://orders.db", SqlBackend::Sqlite),
            ("sqlite:orders.db", SqlBackend::Sqlite),
        ] {
            assert_eq!(SqlBackend::from_url(url).unwrap(), backend, "{url}");
        }
        let error = SqlBackend::from_url("mongodb://u:secret@h/db").unwrap_err();
        let message = error.to_string();
        assert!(message.contains("unsupported database URL"), "{message}");
        assert!(message.contains("mongodb://u@h/db"), "{message}");
        assert!(!message.contains("secret"), "{message}");
        assert!(SqlBackend::from_url("orders.db").is_err());
    }

    #[test]
    fn redact_drops_password_and_query() {
        assert_eq!(
            redact("postgres://orderflow:pw@127.0.0.1:5432/db?sslpassword=x"),
            "postgres://orderflow@127.0.0.1:5432/db"
        );
        assert_eq!(redact("mysql://h:3306/db"), "mysql://h:3306/db");
        assert_eq!(redact("mysql://u:p@w@h/db"), "mysql://u@h/db");
        assert_eq!(redact("sqlite:///tmp/o.db"), "sqlite:///tmp/o.db");
        assert_eq!(redact("sqlite:o.db?mode=rwc"), "sqlite:o.db");
    }

    #[test]
    fn statuses_round_trip_by_their_avro_symbols() {
        for status in [
            OrderStatus::Ordered,
            OrderStatus::Paid,
            OrderStatus::Cancelled,
            OrderStatus::Refunded,
            OrderStatus::Rejected,
        ] {
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status_name(status)));
            assert_eq!(parse_status(status_name(status)), Some(status));
        }
        assert_eq!(parse_status("SHIPPED"), None);
    }
}
