//! A task: one processor instance over one input partition, with its stores and
//! pending timers. The engine and the test driver both run processors through it, so
//! the journal (a failed call leaves no trace), the changelog flush and the restore
//! are the same code in tests and in production.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::context::{Context, Continuation, Deferred, GlobalTables, Output, TaskState};
use crate::processor::{ProcessError, Processor, Record};
use crate::store::KeyValueStore;
use crate::timer::{TimeDomain, Timer, TimerIndex};
use crate::topology::{ProcessorNode, Topology};
use crate::wire::TopicSerde;

/// Which hook a call runs.
#[derive(Debug, Clone, Copy)]
pub enum Hook<'r> {
    /// `init`, once after restore.
    Init,
    /// `process` for one record.
    Process(&'r Record),
    /// `punctuate` for one due timer.
    Punctuate(&'r Timer),
}

/// A changelog record: a store's key and its new value (`None`: deleted), for the
/// changelog topic's partition equal to the task's.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangelogRecord {
    /// The changelog topic.
    pub topic: String,
    /// The store key.
    pub key: String,
    /// The value bytes, `None` for a tombstone.
    pub value: Option<Vec<u8>>,
}

/// A changelog record as read back for a restore: (store, key, value), `None` for a
/// deletion.
pub type RestoredEntry = (Arc<str>, String, Option<Vec<u8>>);

/// One processor instance over one partition.
pub struct Task {
    node: Arc<ProcessorNode>,
    processor: Box<dyn Processor>,
    state: TaskState,
    /// Store name -> changelog topic, for the stores that have one.
    changelogs: BTreeMap<String, String>,
    /// The job the last call deferred, until the runner takes it.
    deferred: Option<Deferred>,
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task")
            .field("processor", &self.node.name)
            .field("partition", &self.state.partition)
            .finish_non_exhaustive()
    }
}

impl Task {
    /// A task with its stores restored from `changelog`, which yields the records of
    /// each store's changelog partition (store name, key, value) in offset order.
    /// Call [`Task::run`] with [`Hook::Init`] before anything else.
    pub fn restore(
        topology: &Topology,
        node: Arc<ProcessorNode>,
        processor: Box<dyn Processor>,
        partition: i32,
        changelog: impl IntoIterator<Item = RestoredEntry>,
    ) -> Result<Task, ProcessError> {
        let mut stores: BTreeMap<String, KeyValueStore> = node
            .stores
            .iter()
            .map(|name| (name.clone(), KeyValueStore::new(name.clone())))
            .collect();
        for (store, key, value) in changelog {
            if let Some(s) = stores.get_mut(&*store) {
                s.restore(key, value);
            }
        }
        let timers = match node.timer_store.as_ref().and_then(|n| stores.get(n)) {
            Some(store) => TimerIndex::rebuild(store)?,
            None => TimerIndex::default(),
        };
        let changelogs = node
            .stores
            .iter()
            .filter_map(|s| {
                topology
                    .stores
                    .get(s)
                    .and_then(|store| store.changelog.clone())
                    .map(|c| (s.clone(), c))
            })
            .collect();
        Ok(Task {
            node,
            processor,
            state: TaskState {
                partition,
                stores,
                timers,
                stream_time: i64::MIN,
            },
            changelogs,
            deferred: None,
        })
    }

    /// The processor's node.
    pub fn node(&self) -> &ProcessorNode {
        &self.node
    }

    /// The task's partition.
    pub fn partition(&self) -> i32 {
        self.state.partition
    }

    /// The changelog topics of the task's stores.
    pub fn changelog_topics(&self) -> impl Iterator<Item = &str> {
        self.changelogs.values().map(String::as_str)
    }

    /// The task's stream time.
    pub fn stream_time(&self) -> i64 {
        self.state.stream_time
    }

    /// Moves stream time forward to `timestamp` (never back).
    pub fn observe(&mut self, timestamp: i64) {
        self.state.stream_time = self.state.stream_time.max(timestamp);
    }

    /// A store of the task.
    pub fn store(&self, name: &str) -> Option<&KeyValueStore> {
        self.state.stores.get(name)
    }

    /// The number of pending timers.
    pub fn pending_timers(&self) -> usize {
        self.state.timers.len()
    }

    /// The earliest due time of a clock's timers.
    pub fn next_due(&self, domain: TimeDomain) -> Option<i64> {
        self.state.timers.next_due(domain)
    }

    /// Removes and returns the earliest timer of `domain` due at `now`.
    pub fn pop_due(&mut self, domain: TimeDomain, now: i64) -> Option<Timer> {
        let name = self.node.timer_store.as_ref()?;
        let store = self.state.stores.get_mut(name)?;
        self.state.timers.pop_due(store, domain, now)
    }

    /// Runs one hook inside a journal: on success its outputs are returned and its
    /// store changes are kept (dirty, for [`Task::take_changelog`]); on error every
    /// store change of the call is undone and its forwards are dropped. A `process`
    /// call that deferred leaves its job for [`Task::take_deferred`].
    pub fn run(
        &mut self,
        hook: Hook<'_>,
        globals: &GlobalTables,
        serde: &TopicSerde,
        wall_time: i64,
        timestamp: i64,
    ) -> Result<Vec<Output>, ProcessError> {
        let may_defer = matches!(hook, Hook::Process(_));
        self.journaled(
            globals,
            serde,
            wall_time,
            timestamp,
            may_defer,
            |p, ctx| match hook {
                Hook::Init => p.init(ctx),
                Hook::Process(record) => p.process(record, ctx),
                Hook::Punctuate(timer) => p.punctuate(timer, ctx),
            },
        )
    }

    /// Runs the continuation of a deferred job, journaled like [`Task::run`], with the
    /// timestamp of the record whose `process` call deferred it. It may defer again.
    pub fn resume(
        &mut self,
        continuation: Continuation,
        globals: &GlobalTables,
        serde: &TopicSerde,
        wall_time: i64,
        timestamp: i64,
    ) -> Result<Vec<Output>, ProcessError> {
        self.journaled(globals, serde, wall_time, timestamp, true, |_, ctx| {
            continuation(ctx)
        })
    }

    /// The job the last successful call deferred, if it did.
    pub fn take_deferred(&mut self) -> Option<Deferred> {
        self.deferred.take()
    }

    fn journaled(
        &mut self,
        globals: &GlobalTables,
        serde: &TopicSerde,
        wall_time: i64,
        timestamp: i64,
        may_defer: bool,
        call: impl FnOnce(&mut dyn Processor, &mut Context<'_>) -> Result<(), ProcessError>,
    ) -> Result<Vec<Output>, ProcessError> {
        for store in self.state.stores.values_mut() {
            store.begin();
        }
        self.deferred = None;
        let mut outputs = Vec::new();
        let (result, deferred) = {
            let mut ctx = Context::new(
                &self.node,
                &mut self.state,
                globals,
                serde,
                &mut outputs,
                wall_time,
                timestamp,
            );
            ctx.may_defer = may_defer;
            let result = call(self.processor.as_mut(), &mut ctx);
            (result, ctx.deferred.take())
        };
        match result {
            Ok(()) => {
                for store in self.state.stores.values_mut() {
                    store.commit_call();
                }
                self.deferred = deferred;
                Ok(outputs)
            }
            Err(error) => {
                for store in self.state.stores.values_mut() {
                    store.rollback_call();
                }
                if let Some(name) = &self.node.timer_store
                    && let Some(store) = self.state.stores.get(name)
                {
                    self.state.timers = TimerIndex::rebuild(store)?;
                }
                Err(error)
            }
        }
    }

    /// The latest value of every store key changed since the last call, for the
    /// changelog topics; clears the dirty sets.
    pub fn take_changelog(&mut self) -> Vec<ChangelogRecord> {
        let mut out = Vec::new();
        for (name, store) in &mut self.state.stores {
            let dirty = store.take_dirty();
            if let Some(topic) = self.changelogs.get(name) {
                out.extend(dirty.into_iter().map(|(key, value)| ChangelogRecord {
                    topic: topic.clone(),
                    key,
                    value,
                }));
            }
        }
        out
    }

    /// Calls `close`; its forwards are dropped (the task is going away).
    pub fn close(&mut self, globals: &GlobalTables, serde: &TopicSerde, wall_time: i64) {
        let mut outputs = Vec::new();
        let mut ctx = Context::new(
            &self.node,
            &mut self.state,
            globals,
            serde,
            &mut outputs,
            wall_time,
            wall_time,
        );
        self.processor.close(&mut ctx);
    }
}
