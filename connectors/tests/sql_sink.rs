//! The SQL sink's tables on real databases: PostgreSQL and MariaDB from
//! `TEST_POSTGRES_URL` / `TEST_MYSQL_URL` (scripts/services.sh starts them and
//! scripts/test.sh exports both), SQLite in a temporary file. Every scenario runs on
//! all three, each time in a database of its own that is dropped afterwards. A
//! missing URL fails the test with the variable's name: nothing is skipped.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use orderflow_connectors::sql_sink::{OrderRow, OrdersSql, SqlBackend, SqlSinkError};
use orderflow_pipelines::records::{OrderEvent, OrderItem, OrderStatus};
use sqlx::mysql::MySqlConnection;
use sqlx::postgres::PgConnection;
use sqlx::sqlite::SqliteConnection;
use sqlx::{Connection, Executor};

// ---------------------------------------------------------------------------------
// Scratch databases
// ---------------------------------------------------------------------------------

/// A database made for one test.
#[derive(Debug, Clone)]
struct Db {
    backend: SqlBackend,
    /// The URL the sink connects with.
    url: String,
    /// The server's base URL (PostgreSQL, MySQL), to drop the database with.
    admin_url: Option<String>,
    /// The database's name (PostgreSQL, MySQL).
    name: String,
    /// The directory holding the SQLite file.
    dir: Option<PathBuf>,
}

/// The value of a server URL variable, or an error that says how to get one.
fn server_url(var: &str) -> Result<String> {
    match std::env::var(var) {
        Ok(url) if !url.trim().is_empty() => Ok(url),
        _ => bail!(
            "{var} is not set: these tests need a real server. Run scripts/test.sh, or \
             `eval \"$(scripts/services.sh)\"` first, or set {var} to a server URL \
             whose user may create databases"
        ),
    }
}

/// `base` with its database replaced by `name`, query kept.
fn with_database(base: &str, name: &str) -> Result<String> {
    let (scheme, rest) = base
        .split_once("://")
        .with_context(|| format!("{base} is not a URL"))?;
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, format!("?{query}")),
        None => (rest, String::new()),
    };
    let authority = rest.split('/').next().unwrap_or_default();
    Ok(format!("{scheme}://{authority}/{name}{query}"))
}

impl Db {
    async fn create(backend: SqlBackend) -> Result<Self> {
        let name = format!("orderflow_sink_{}", uuid::Uuid::new_v4().simple());
        match backend {
            SqlBackend::Postgres => {
                let admin = server_url("TEST_POSTGRES_URL")?;
                let mut conn = PgConnection::connect(&admin)
                    .await
                    .with_context(|| format!("connecting to TEST_POSTGRES_URL {admin}"))?;
                conn.execute(format!("CREATE DATABASE {name}").as_str())
                    .await
                    .context("CREATE DATABASE on PostgreSQL")?;
                conn.close().await?;
                Ok(Self {
                    backend,
                    url: with_database(&admin, &name)?,
                    admin_url: Some(admin),
                    name,
                    dir: None,
                })
            }
            SqlBackend::MySql => {
                let admin = server_url("TEST_MYSQL_URL")?;
                let mut conn = MySqlConnection::connect(&admin)
                    .await
                    .with_context(|| format!("connecting to TEST_MYSQL_URL {admin}"))?;
                conn.execute(format!("CREATE DATABASE {name}").as_str())
                    .await
                    .context("CREATE DATABASE on MySQL")?;
                conn.close().await?;
                Ok(Self {
                    backend,
                    url: with_database(&admin, &name)?,
                    admin_url: Some(admin),
                    name,
                    dir: None,
                })
            }
            SqlBackend::Sqlite => {
                let dir = std::env::temp_dir().join(&name);
                // A directory that does not exist yet: connect creates it and the file.
                let url = format!("sqlite://{}", dir.join("sink").join("orders.db").display());
                Ok(Self {
                    backend,
                    url,
                    admin_url: None,
                    name,
                    dir: Some(dir),
                })
            }
        }
    }

    async fn drop_database(&self) -> Result<()> {
        match (self.backend, &self.admin_url) {
            (SqlBackend::Postgres, Some(admin)) => {
                let mut conn = PgConnection::connect(admin).await?;
                conn.execute(
                    format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name).as_str(),
                )
                .await?;
                conn.close().await?;
            }
            (SqlBackend::MySql, Some(admin)) => {
                let mut conn = MySqlConnection::connect(admin).await?;
                conn.execute(format!("DROP DATABASE IF EXISTS {}", self.name).as_str())
                    .await?;
                conn.close().await?;
            }
            _ => {
                if let Some(dir) = &self.dir {
                    tokio::fs::remove_dir_all(dir).await?;
                }
            }
        }
        Ok(())
    }

    /// Runs a raw statement on the test's database, beside the sink.
    async fn execute(&self, sql: &str) -> Result<()> {
        match self.backend {
            SqlBackend::Postgres => {
                let mut conn = PgConnection::connect(&self.url).await?;
                conn.execute(sql).await?;
                conn.close().await?;
            }
            SqlBackend::MySql => {
                let mut conn = MySqlConnection::connect(&self.url).await?;
                conn.execute(sql).await?;
                conn.close().await?;
            }
            SqlBackend::Sqlite => {
                let mut conn = SqliteConnection::connect(&self.url).await?;
                conn.execute(sql).await?;
                conn.close().await?;
            }
        }
        Ok(())
    }

    async fn sink(&self) -> Result<OrdersSql> {
        Ok(OrdersSql::connect(&self.url).await?)
    }
}

/// Runs `scenario` on a fresh database of `backend` and drops the database after,
/// whether the scenario passed, failed or panicked.
async fn run<F, Fut>(backend: SqlBackend, scenario: F) -> Result<()>
where
    F: FnOnce(Db) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let db = Db::create(backend).await?;
    let outcome = tokio::spawn(scenario(db.clone())).await;
    let dropped = db.drop_database().await;
    match outcome {
        Ok(result) => result?,
        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        Err(join) => return Err(join.into()),
    }
    dropped.with_context(|| format!("dropping the test database {}", db.name))
}

macro_rules! on_every_backend {
    ($($scenario:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() -> anyhow::Result<()> {
                    super::run(super::SqlBackend::Postgres, super::$scenario).await
                }
            )*
        }
        mod mysql {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() -> anyhow::Result<()> {
                    super::run(super::SqlBackend::MySql, super::$scenario).await
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() -> anyhow::Result<()> {
                    super::run(super::SqlBackend::Sqlite, super::$scenario).await
                }
            )*
        }
    };
}

on_every_backend!(
    in_order_events,
    out_of_order_versions,
    repeated_events,
    items_written_once,
    batch_with_several_orders,
    reconnect_runs_migrations_again,
    read_methods,
    failed_batch_rolls_back,
    concurrent_writers_keep_the_newest,
);

// ---------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------

const T0: i64 = 1_764_000_000_000;
const BUYER: &str = "b-7f3a";
const SELLER: &str = "s-91c2";

fn item(product_id: &str, quantity: i32, unit_price: i64) -> OrderItem {
    OrderItem {
        product_id: product_id.to_string(),
        quantity,
        unit_price,
    }
}

/// 2 x 15.00 + 1 x 9.99 EUR.
fn lines() -> Vec<OrderItem> {
    vec![item("p-1", 2, 1_500), item("p-2", 1, 999)]
}

/// Version `version` of order `order_id` of BUYER with SELLER, as the saga writes
/// it: 1 ORDERED, 2 PAID, 3 REFUNDED; `at` grows with the version.
fn event(order_id: &str, version: i64) -> OrderEvent {
    let (status, reason) = match version {
        1 => (OrderStatus::Ordered, None),
        2 => (OrderStatus::Paid, None),
        _ => (OrderStatus::Refunded, Some("BUYER_CANCELLED".to_string())),
    };
    OrderEvent {
        order_id: order_id.to_string(),
        buyer_id: BUYER.to_string(),
        seller_id: SELLER.to_string(),
        status,
        total: 3_999,
        currency: "EUR".to_string(),
        reason,
        version,
        at: T0 + version * 1_000,
        items: lines(),
        request_id: Some(format!("req-{order_id}-{version}")),
    }
}

/// What the sink should hold after `event` is the newest applied, with `items`.
fn row(event: &OrderEvent, items: Vec<OrderItem>) -> OrderRow {
    OrderRow {
        order_id: event.order_id.clone(),
        buyer_id: event.buyer_id.clone(),
        seller_id: event.seller_id.clone(),
        status: event.status,
        total: event.total,
        currency: event.currency.clone(),
        reason: event.reason.clone(),
        version: event.version,
        updated_at: event.at,
        items,
    }
}

async fn stored(sink: &OrdersSql, order_id: &str) -> Result<OrderRow> {
    sink.order(order_id)
        .await?
        .ok_or_else(|| anyhow!("order {order_id} is not stored"))
}

// ---------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------

async fn in_order_events(db: Db) -> Result<()> {
    let sink = db.sink().await?;
    assert_eq!(sink.backend(), db.backend);
    sink.apply(&[event("o-1", 1)]).await?;
    assert_eq!(stored(&sink, "o-1").await?, row(&event("o-1", 1), lines()));
    sink.apply(&[event("o-1", 2)]).await?;
    assert_eq!(stored(&sink, "o-1").await?, row(&event("o-1", 2), lines()));
    sink.apply(&[event("o-1", 3)]).await?;
    let refunded = stored(&sink, "o-1").await?;
    assert_eq!(refunded, row(&event("o-1", 3), lines()));
    assert_eq!(refunded.reason.as_deref(), Some("BUYER_CANCELLED"));
    sink.close().await;
    Ok(())
}

async fn out_of_order_versions(db: Db) -> Result<()> {
    let sink = db.sink().await?;
    // One batch per event: v3, then v2, then v1; v3 stays.
    for version in [3, 2, 1] {
        sink.apply(&[event("o-1", version)]).await?;
        assert_eq!(
            stored(&sink, "o-1").await?,
            row(&event("o-1", 3), lines()),
            "after v{version}"
        );
    }
    // In one batch: the newest in it wins, wherever it sits.
    sink.apply(&[event("o-2", 2), event("o-2", 3), event("o-2", 1)])
        .await?;
    assert_eq!(stored(&sink, "o-2").await?, row(&event("o-2", 3), lines()));
    // A newer version after older ones still lands.
    sink.apply(&[event("o-3", 1)]).await?;
    sink.apply(&[event("o-3", 3)]).await?;
    sink.apply(&[event("o-3", 2)]).await?;
    assert_eq!(stored(&sink, "o-3").await?, row(&event("o-3", 3), lines()));
    sink.close().await;
    Ok(())
}

async fn repeated_events(db: Db) -> Result<()> {
    let sink = db.sink().await?;
    let batch = [event("o-1", 1), event("o-1", 1), event("o-1", 2)];
    sink.apply(&batch).await?;
    // The same batch again, as after a crash before the offsets were committed.
    sink.apply(&batch).await?;
    sink.apply(&[event("o-1", 2)]).await?;
    sink.apply(&[event("o-1", 1)]).await?;
    assert_eq!(stored(&sink, "o-1").await?, row(&event("o-1", 2), lines()));
    // An equal version never overwrites: a second v2 saying something else is
    // ignored.
    let mut other = event("o-1", 2);
    other.status = OrderStatus::Cancelled;
    other.reason = Some("PAYMENT_DECLINED".to_string());
    sink.apply(&[other]).await?;
    assert_eq!(stored(&sink, "o-1").await?, row(&event("o-1", 2), lines()));
    sink.close().await;
    Ok(())
}

async fn items_written_once(db: Db) -> Result<()> {
    let sink = db.sink().await?;
    // The lines come with the first event, and again with later ones: stored once.
    sink.apply(&[event("o-1", 1), event("o-1", 2)]).await?;
    sink.apply(&[event("o-1", 3)]).await?;
    sink.apply(&[event("o-1", 1)]).await?;
    assert_eq!(stored(&sink, "o-1").await?.items, lines());
    // Lines are fixed when the order is placed: later different ones change nothing.
    let mut changed = event("o-1", 4);
    changed.items = vec![item("p-9", 7, 1)];
    sink.apply(&[changed]).await?;
    let after = stored(&sink, "o-1").await?;
    assert_eq!(after.version, 4);
    assert_eq!(after.items, lines());

    // An event without lines stores the order without lines; an older event that
    // carries them, arriving later, adds them without moving the order back.
    let mut bare = event("o-2", 2);
    bare.items = Vec::new();
    sink.apply(&[bare.clone()]).await?;
    assert_eq!(stored(&sink, "o-2").await?, row(&bare, Vec::new()));
    sink.apply(&[event("o-2", 1)]).await?;
    assert_eq!(stored(&sink, "o-2").await?, row(&bare, lines()));

    // The lines keep their order, however many.
    let many: Vec<OrderItem> = (0..25)
        .map(|i| item(&format!("p-{i:02}"), i + 1, 100 * i64::from(i)))
        .collect();
    let mut big = event("o-3", 1);
    big.items = many.clone();
    sink.apply(&[big.clone(), big]).await?;
    assert_eq!(stored(&sink, "o-3").await?.items, many);
    sink.close().await;
    Ok(())
}

async fn batch_with_several_orders(db: Db) -> Result<()> {
    let sink = db.sink().await?;
    // Interleaved, as a partition delivers them; o-c never gets past v1.
    let batch = [
        event("o-a", 1),
        event("o-b", 1),
        event("o-a", 2),
        event("o-c", 1),
        event("o-b", 2),
        event("o-a", 3),
        event("o-b", 1),
    ];
    sink.apply(&batch).await?;
    assert_eq!(stored(&sink, "o-a").await?, row(&event("o-a", 3), lines()));
    assert_eq!(stored(&sink, "o-b").await?, row(&event("o-b", 2), lines()));
    assert_eq!(stored(&sink, "o-c").await?, row(&event("o-c", 1), lines()));
    assert_eq!(sink.orders_of_buyer(BUYER, 100).await?.len(), 3);
    // Large batches too: 200 orders, 3 versions each, in one transaction.
    let big: Vec<OrderEvent> = (1..=3)
        .flat_map(|version| (0..200).map(move |i| event(&format!("n-{i:03}"), version)))
        .collect();
    sink.apply(&big).await?;
    for i in [0, 77, 199] {
        let id = format!("n-{i:03}");
        assert_eq!(stored(&sink, &id).await?, row(&event(&id, 3), lines()));
    }
    assert_eq!(sink.orders_of_seller(SELLER, 1_000).await?.len(), 203);
    // An empty batch is fine and changes nothing.
    sink.apply(&[]).await?;
    sink.close().await;
    Ok(())
}

async fn reconnect_runs_migrations_again(db: Db) -> Result<()> {
    let first = db.sink().await?;
    first.apply(&[event("o-1", 1)]).await?;
    first.close().await;
    // Connecting again runs the migrations again: nothing to do, nothing lost. On
    // MySQL the second connection uses the mariadb:// spelling.
    let url = match db.backend {
        SqlBackend::MySql => db.url.replacen("mysql://", "mariadb://", 1),
        _ => db.url.clone(),
    };
    for _ in 0..2 {
        let again = OrdersSql::connect(&url).await?;
        assert_eq!(again.backend(), db.backend);
        assert_eq!(stored(&again, "o-1").await?, row(&event("o-1", 1), lines()));
        again.close().await;
    }
    // Two sinks connecting (and checking the migrations) at once, and a clone
    // sharing a pool.
    let (a, b) = tokio::join!(OrdersSql::connect(&url), OrdersSql::connect(&url));
    let (a, b) = (a?, b?);
    let shared = a.clone();
    shared.apply(&[event("o-1", 2)]).await?;
    assert_eq!(stored(&b, "o-1").await?, row(&event("o-1", 2), lines()));
    a.close().await;
    b.close().await;
    Ok(())
}

async fn read_methods(db: Db) -> Result<()> {
    let sink = db.sink().await?;
    assert_eq!(sink.order("nope").await?, None);
    assert!(sink.orders_of_buyer(BUYER, 10).await?.is_empty());

    // Three orders of BUYER (two with SELLER, one with s-other) and one of
    // another buyer with SELLER; updated at different times.
    let mut first = event("o-1", 2);
    first.at = T0 + 10_000;
    let mut second = event("o-2", 1);
    second.at = T0 + 30_000;
    let mut elsewhere = event("o-3", 3);
    elsewhere.seller_id = "s-other".to_string();
    elsewhere.at = T0 + 20_000;
    let mut other_buyer = event("o-4", 1);
    other_buyer.buyer_id = "b-other".to_string();
    other_buyer.at = T0 + 40_000;
    other_buyer.items = Vec::new();
    sink.apply(&[
        first.clone(),
        second.clone(),
        elsewhere.clone(),
        other_buyer.clone(),
    ])
    .await?;

    // Most recently updated first.
    let of_buyer = sink.orders_of_buyer(BUYER, 10).await?;
    assert_eq!(
        of_buyer,
        vec![
            row(&second, lines()),
            row(&elsewhere, lines()),
            row(&first, lines())
        ]
    );
    // The limit counts orders, not lines.
    assert_eq!(
        sink.orders_of_buyer(BUYER, 2).await?,
        of_buyer[..2].to_vec()
    );
    assert_eq!(
        sink.orders_of_seller(SELLER, 10).await?,
        vec![
            row(&other_buyer, Vec::new()),
            row(&second, lines()),
            row(&first, lines())
        ]
    );
    assert_eq!(
        sink.orders_of_seller("s-other", 10).await?,
        vec![row(&elsewhere, lines())]
    );
    assert!(sink.orders_of_seller(BUYER, 10).await?.is_empty());
    assert_eq!(stored(&sink, "o-4").await?, row(&other_buyer, Vec::new()));

    // Ids compare exactly: another case is another order (MySQL's default
    // collation would say otherwise).
    assert_eq!(sink.order("O-1").await?, None);
    assert!(sink.orders_of_buyer("B-7F3A", 10).await?.is_empty());
    sink.apply(&[event("O-1", 1)]).await?;
    assert_eq!(stored(&sink, "O-1").await?, row(&event("O-1", 1), lines()));
    assert_eq!(stored(&sink, "o-1").await?, row(&first, lines()));

    // Text the way users write it survives the round trip.
    let mut unicode = event("o-ü-😀", 1);
    unicode.reason = Some("naïve — ✓".to_string());
    unicode.items = vec![item("ürün-1", 1, 5)];
    sink.apply(&[unicode.clone()]).await?;
    assert_eq!(
        stored(&sink, "o-ü-😀").await?,
        row(&unicode, unicode.items.clone())
    );
    sink.close().await;
    Ok(())
}

async fn failed_batch_rolls_back(db: Db) -> Result<()> {
    let sink = db.sink().await?;
    sink.apply(&[event("o-1", 1)]).await?;
    // Make the database refuse a line of more than 100 units. A batch that writes
    // its order rows and then fails on such a line must leave no trace at all.
    let refuse = match db.backend {
        SqlBackend::Sqlite => {
            "CREATE TRIGGER at_most_100 BEFORE INSERT ON order_items \
             WHEN NEW.quantity > 100 BEGIN SELECT RAISE(ABORT, 'at most 100 units'); END"
        }
        _ => "ALTER TABLE order_items ADD CONSTRAINT at_most_100 CHECK (quantity <= 100)",
    };
    db.execute(refuse).await?;
    let mut huge = event("o-2", 1);
    huge.items = vec![item("p-1", 1, 5), item("p-2", 1_000, 5)];
    let error = sink
        .apply(&[event("o-1", 2), huge])
        .await
        .err()
        .context("a batch with a refused line must fail")?;
    let message = error.to_string();
    let backend = db.backend.to_string();
    ensure!(message.contains(&backend), "names the database: {message}");
    ensure!(
        message.contains("writing a batch of 2 events (2 orders)"),
        "says what failed: {message}"
    );
    ensure!(!message.contains(":orderflow@"), "no password: {message}");
    ensure!(matches!(error, SqlSinkError::Query { .. }), "{error:?}");
    ensure!(!error.is_transient(), "a refused row needs an operator");
    assert_eq!(stored(&sink, "o-1").await?, row(&event("o-1", 1), lines()));
    assert_eq!(sink.order("o-2").await?, None);
    // The pool is still usable after the rollback.
    sink.apply(&[event("o-1", 2)]).await?;
    assert_eq!(stored(&sink, "o-1").await?.version, 2);
    sink.close().await;
    Ok(())
}

async fn concurrent_writers_keep_the_newest(db: Db) -> Result<()> {
    // Two sinks writing the same orders at once (instances overlapping during a
    // rebalance), each batch in its own order: no deadlock, no lost update, the
    // newest version of every order wins.
    let a = db.sink().await?;
    let b = db.sink().await?;
    let orders: Vec<String> = (0..20).map(|i| format!("c-{i:02}")).collect();
    let batches = |reverse: bool| -> Vec<Vec<OrderEvent>> {
        (1..=5)
            .map(|version| {
                let mut batch: Vec<OrderEvent> =
                    orders.iter().map(|id| event(id, version)).collect();
                if reverse {
                    batch.reverse();
                }
                batch
            })
            .collect()
    };
    let write = |sink: OrdersSql, batches: Vec<Vec<OrderEvent>>| async move {
        for batch in batches {
            sink.apply(&batch).await?;
        }
        Ok::<_, SqlSinkError>(())
    };
    let mut backwards = batches(true);
    backwards.reverse();
    let (ra, rb) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(
            write(a.clone(), batches(false)),
            write(b.clone(), backwards)
        )
    })
    .await
    .context("concurrent writers took over 60 s")?;
    ra?;
    rb?;
    for id in &orders {
        assert_eq!(stored(&a, id).await?, row(&event(id, 5), lines()), "{id}");
    }
    a.close().await;
    b.close().await;
    Ok(())
}

// ---------------------------------------------------------------------------------
// Without a server
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn unsupported_and_unreachable_urls_are_clear_errors() -> Result<()> {
    let error = OrdersSql::connect("redis://u:secret@127.0.0.1:6379")
        .await
        .err()
        .context("redis:// is no SQL database")?;
    let message = error.to_string();
    assert!(
        matches!(error, SqlSinkError::UnsupportedUrl { .. }),
        "{error:?}"
    );
    assert!(message.contains("unsupported database URL"), "{message}");
    assert!(
        message.contains("postgres://"),
        "lists what works: {message}"
    );
    assert!(!message.contains("secret"), "{message}");

    // Nothing listens on port 1: a connect error naming the database, worth a retry.
    for (url, backend) in [
        ("postgres://orderflow:secret@127.0.0.1:1/x", "PostgreSQL"),
        ("mariadb://orderflow:secret@127.0.0.1:1/x", "MySQL"),
    ] {
        let error = OrdersSql::connect(url)
            .await
            .err()
            .with_context(|| format!("{url} has no server"))?;
        let message = error.to_string();
        assert!(matches!(error, SqlSinkError::Connect { .. }), "{error:?}");
        assert!(message.contains(backend), "{message}");
        assert!(message.contains("127.0.0.1:1/x"), "{message}");
        assert!(!message.contains("secret"), "{message}");
        assert!(error.is_transient(), "{message}");
    }

    // A SQLite path that cannot be a directory.
    let error = OrdersSql::connect("sqlite:///proc/version/orders.db")
        .await
        .err()
        .context("a file under /proc/version")?;
    assert!(error.to_string().contains("SQLite"), "{error}");
    Ok(())
}

#[test]
fn a_missing_server_url_names_its_variable() {
    let error = server_url("TEST_ORDERFLOW_NEVER_SET_URL")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        error.contains("TEST_ORDERFLOW_NEVER_SET_URL is not set"),
        "{error}"
    );
}

#[test]
fn scratch_urls_replace_only_the_database() -> Result<()> {
    assert_eq!(
        with_database("postgres://u:p@127.0.0.1:5432/postgres", "t1")?,
        "postgres://u:p@127.0.0.1:5432/t1"
    );
    assert_eq!(
        with_database("mysql://u:p@127.0.0.1:3306?ssl-mode=disabled", "t2")?,
        "mysql://u:p@127.0.0.1:3306/t2?ssl-mode=disabled"
    );
    Ok(())
}
