//! [`RegistryError`]: everything the schema registry (embedded or remote) can refuse,
//! with the Confluent `error_code` and HTTP status each refusal maps to.
//!
//! The variants are sorted by what the caller does: fix the request (invalid schema,
//! incompatible, invalid version or level), treat it as absent (the `*NotFound`
//! variants), or retry later ([`RegistryError::Remote`] when
//! [`RegistryError::is_retriable`]).

/// Why the schema registry refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The schema text is not a valid Avro schema (or a reference in it cannot be
    /// resolved).
    #[error("Invalid schema: {0}")]
    InvalidSchema(String),
    /// A `schemaType` other than `AVRO`.
    #[error("Invalid schema: unsupported schemaType '{0}', this registry supports AVRO only")]
    UnsupportedSchemaType(String),
    /// The schema breaks the subject's compatibility level.
    #[error(
        "Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: [{}]",
        reasons.join(", ")
    )]
    Incompatible {
        /// The subject the schema was offered to.
        subject: String,
        /// One line per broken rule, naming the version it was checked against.
        reasons: Vec<String>,
    },
    /// No live (not soft-deleted) version under the subject.
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    /// The subject exists but not this version (or the version is soft-deleted).
    #[error("Version {version} not found.")]
    VersionNotFound {
        /// The subject asked for.
        subject: String,
        /// The version asked for (`latest` when the subject has no live version).
        version: String,
    },
    /// The schema is not registered under the subject (lookup).
    #[error("Schema not found")]
    SchemaNotFound {
        /// The subject searched.
        subject: String,
    },
    /// No schema has this global id.
    #[error("Schema {0} not found")]
    SchemaIdNotFound(u32),
    /// A version that is neither a positive number nor `latest`.
    #[error(
        "The specified version '{0}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
    )]
    InvalidVersion(String),
    /// A compatibility level that is none of the seven known ones.
    #[error(
        "Invalid compatibility level '{0}'. Valid values are none, backward, forward, full, backward_transitive, forward_transitive, and full_transitive"
    )]
    InvalidCompatibilityLevel(String),
    /// The subject has no subject-level compatibility level (and the caller did not ask
    /// for the global default).
    #[error("Subject '{0}' does not have subject-level compatibility configured")]
    SubjectLevelNotConfigured(String),
    /// A soft delete of a subject whose versions are all soft-deleted already.
    #[error("Subject '{0}' was soft deleted. Set permanent=true to delete permanently")]
    SubjectSoftDeleted(String),
    /// A permanent delete of a subject that was not soft-deleted first.
    #[error("Subject '{0}' was not deleted first before being permanently deleted")]
    SubjectNotSoftDeleted(String),
    /// A soft delete of a version that is soft-deleted already.
    #[error(
        "Subject '{subject}' Version {version} was soft deleted. Set permanent=true to delete permanently"
    )]
    VersionSoftDeleted {
        /// The subject.
        subject: String,
        /// The version.
        version: u32,
    },
    /// A permanent delete of a version that was not soft-deleted first.
    #[error(
        "Subject '{subject}' Version {version} was not deleted first before being permanently deleted"
    )]
    VersionNotSoftDeleted {
        /// The subject.
        subject: String,
        /// The version.
        version: u32,
    },
    /// A permanent delete of a version that other schemas still reference.
    #[error("One or more references exist to the schema {{subject={subject}, version={version}}}")]
    ReferenceExists {
        /// The subject.
        subject: String,
        /// The version.
        version: u32,
    },
    /// A remote registry failed in a way none of the variants above describes (it was
    /// unreachable, answered 5xx, or sent something unreadable).
    #[error("schema registry call failed: {message}")]
    Remote {
        /// The registry's `error_code`, when it sent one.
        error_code: Option<u32>,
        /// What went wrong.
        message: String,
        /// Whether calling again may succeed (a network error, a 502/503).
        retriable: bool,
    },
    /// A broken invariant inside the registry (maps to 50001).
    #[error("Error in the backend data store: {0}")]
    Internal(String),
}

impl RegistryError {
    /// The Confluent `error_code` of this error.
    pub fn error_code(&self) -> u32 {
        match self {
            RegistryError::InvalidSchema(_) | RegistryError::UnsupportedSchemaType(_) => 42201,
            RegistryError::Incompatible { .. } => 409,
            RegistryError::SubjectNotFound(_) => 40401,
            RegistryError::VersionNotFound { .. } => 40402,
            RegistryError::SchemaNotFound { .. } | RegistryError::SchemaIdNotFound(_) => 40403,
            RegistryError::SubjectSoftDeleted(_) => 40404,
            RegistryError::SubjectNotSoftDeleted(_) => 40405,
            RegistryError::VersionSoftDeleted { .. } => 40406,
            RegistryError::VersionNotSoftDeleted { .. } => 40407,
            RegistryError::SubjectLevelNotConfigured(_) => 40408,
            RegistryError::InvalidVersion(_) => 42202,
            RegistryError::InvalidCompatibilityLevel(_) => 42203,
            RegistryError::ReferenceExists { .. } => 42206,
            RegistryError::Remote { .. } | RegistryError::Internal(_) => 50001,
        }
    }

    /// The HTTP status Confluent answers this error with.
    pub fn http_status(&self) -> u16 {
        match self.error_code() {
            409 => 409,
            code if (40400..40500).contains(&code) => 404,
            code if (42200..42300).contains(&code) => 422,
            _ => 500,
        }
    }

    /// Whether the same call may succeed later without changing the request.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            RegistryError::Remote {
                retriable: true,
                ..
            }
        )
    }
}
