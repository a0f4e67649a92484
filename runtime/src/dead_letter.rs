//! Dead letters: a record a processor could not decode or process goes, as its
//! original bytes, to the processor's dead-letter topic with headers naming the error
//! and where the record came from; processing goes on.

/// Header names of a dead-letter record.
pub mod headers {
    /// The error message.
    pub const ERROR: &str = "orderflow.error";
    /// A stable error code (`bad_magic`, `truncated`, `invalid`, ...).
    pub const ERROR_KIND: &str = "orderflow.error.kind";
    /// The processor that gave up on the record.
    pub const PROCESSOR: &str = "orderflow.processor";
    /// The record's topic.
    pub const SOURCE_TOPIC: &str = "orderflow.source.topic";
    /// The record's partition (decimal).
    pub const SOURCE_PARTITION: &str = "orderflow.source.partition";
    /// The record's offset (decimal).
    pub const SOURCE_OFFSET: &str = "orderflow.source.offset";
}

/// Where a dead record came from and why it died.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetter<'a> {
    /// The processor.
    pub processor: &'a str,
    /// The record's topic.
    pub topic: &'a str,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// The error code.
    pub kind: &'a str,
    /// The error message.
    pub message: &'a str,
}

impl DeadLetter<'_> {
    /// The record's own headers followed by the dead-letter headers.
    pub fn headers(&self, original: &[(String, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
        let mut out = original.to_vec();
        out.extend([
            (headers::ERROR.to_string(), self.message.as_bytes().to_vec()),
            (
                headers::ERROR_KIND.to_string(),
                self.kind.as_bytes().to_vec(),
            ),
            (
                headers::PROCESSOR.to_string(),
                self.processor.as_bytes().to_vec(),
            ),
            (
                headers::SOURCE_TOPIC.to_string(),
                self.topic.as_bytes().to_vec(),
            ),
            (
                headers::SOURCE_PARTITION.to_string(),
                self.partition.to_string().into_bytes(),
            ),
            (
                headers::SOURCE_OFFSET.to_string(),
                self.offset.to_string().into_bytes(),
            ),
        ]);
        out
    }
}
