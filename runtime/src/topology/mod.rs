//! topology.yaml: the one file that declares topics, schemas, stores, processors,
//! edges and sinks. Loaded in two stages, as a compiler would: [`config`] reads the
//! file into serde structs (unknown keys are errors), then [`compile`] checks every
//! cross-reference and collects every error, each with file:line:column and a dotted
//! path, before failing. [`describe`] prints the compiled graph.

pub mod compile;
pub mod config;
pub mod describe;
pub mod yaml;

pub use compile::{
    Edge, ProcessorNode, Sink, Store, Topic, Topology, TopologyError, TopologyErrors, load,
    load_str,
};
pub use config::{Cleanup, EdgeKind, Guarantee, SinkKind, TimeDomain};
