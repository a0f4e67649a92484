//! A small stateful sample processor for the runtime's tests: it counts clicks per
//! user in a store, forwards every new count, closes a user's count after a minute of
//! wall-clock silence (a wall-clock timer) and marks a session boundary 30 s of stream
//! time after a user's first click (a stream-time timer).
//!
//! Two pages defer the count to an async job, as a processor calling a slow outside
//! service would: `/slow:<ms>` sleeps that long first, `/wait` waits until a test
//! calls [`release_waiting`].

#![allow(dead_code)]

pub mod kafka;

use orderflow_runtime::avro::AvroRecord;
use orderflow_runtime::processor::{BuildError, ProcessorSpec};
use orderflow_runtime::timer::Timer;
use std::sync::atomic::{AtomicBool, Ordering};

use orderflow_runtime::{Catalog, Context, Continuation, ProcessError, Processor, Record};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Click {
    pub user: String,
    pub page: String,
}
impl AvroRecord for Click {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Count {
    pub user: String,
    pub count: i64,
    #[serde(rename = "final")]
    pub closed: bool,
}
impl AvroRecord for Count {}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CounterConfig {
    /// Pages not counted.
    #[serde(default)]
    pub ignore: Vec<String>,
    /// The output topic.
    #[serde(default = "default_output")]
    pub output: String,
}

fn default_output() -> String {
    "counts".to_string()
}

#[derive(Debug)]
pub struct Counter {
    config: CounterConfig,
}

impl Counter {
    pub fn build(spec: &ProcessorSpec) -> Result<Box<dyn Processor>, BuildError> {
        Ok(Box::new(Counter {
            config: spec.config()?,
        }))
    }
}

impl Processor for Counter {
    fn stores(&self) -> &'static [&'static str] {
        &["counts"]
    }

    fn timers(&self) -> &'static [&'static str] {
        &["idle", "session"]
    }

    fn process(&mut self, record: &Record, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let click: Click = record.value()?;
        if click.user != record.key {
            return Err(ProcessError::invalid(format!(
                "key {} is not the click's user {}",
                record.key, click.user
            )));
        }
        if click.page == "/boom" {
            // Write, then fail: the test checks the write is rolled back.
            ctx.store("counts")?.put(&click.user, &999_i64)?;
            return Err(ProcessError::invalid("boom"));
        }
        if click.page == "/undeclared" {
            return ctx.forward("clicks", &click.user, &click);
        }
        if self.config.ignore.contains(&click.page) {
            return Ok(());
        }
        let output = self.config.output.clone();
        if let Some(ms) = click.page.strip_prefix("/slow:") {
            let ms: u64 = ms
                .parse()
                .map_err(|_| ProcessError::invalid("bad /slow:<ms>"))?;
            return ctx.defer(async move {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                let continuation: Continuation =
                    Box::new(move |ctx: &mut Context<'_>| count_click(ctx, &output, &click.user));
                continuation
            });
        }
        if click.page == "/wait" {
            return ctx.defer(async move {
                while !RELEASED.load(Ordering::SeqCst) {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                let continuation: Continuation =
                    Box::new(move |ctx: &mut Context<'_>| count_click(ctx, &output, &click.user));
                continuation
            });
        }
        count_click(ctx, &output, &click.user)
    }

    fn punctuate(&mut self, timer: &Timer, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let store = ctx.store("counts")?;
        let count = store.get::<i64>(&timer.key)?.unwrap_or(0);
        if timer.name == "idle" {
            store.delete(&timer.key);
            ctx.cancel_timer("session", &timer.key)?;
            ctx.forward(
                &self.config.output,
                &timer.key,
                &Count {
                    user: timer.key.clone(),
                    count,
                    closed: true,
                },
            )
        } else {
            // A session boundary: forward the count as of now, marked with -count.
            ctx.forward(
                &self.config.output,
                &timer.key,
                &Count {
                    user: timer.key.clone(),
                    count: -count,
                    closed: false,
                },
            )
        }
    }
}

/// Set once: every `/wait` job, running or to come, goes on.
static RELEASED: AtomicBool = AtomicBool::new(false);

/// Lets every `/wait` job end.
pub fn release_waiting() {
    RELEASED.store(true, Ordering::SeqCst);
}

fn count_click(ctx: &mut Context<'_>, output: &str, user: &str) -> Result<(), ProcessError> {
    let store = ctx.store("counts")?;
    let count = store.get::<i64>(user)?.unwrap_or(0) + 1;
    store.put(user, &count)?;
    if count == 1 {
        ctx.set_timer("session", user)?;
    }
    ctx.set_timer("idle", user)?;
    ctx.forward(
        output,
        user,
        &Count {
            user: user.to_string(),
            count,
            closed: false,
        },
    )
}

pub fn catalog() -> Catalog {
    let mut catalog = Catalog::new();
    catalog.register("counter", Counter::build);
    catalog
}

pub fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn counter_yaml() -> String {
    std::fs::read_to_string(fixtures().join("counter.yaml")).expect("fixture")
}
