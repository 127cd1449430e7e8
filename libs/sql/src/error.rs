//! What went wrong with a statement.

use datafusion::common::DataFusionError;

/// A statement's error. Every variant names the statement's problem; a parse error
/// carries the line and column the parser stopped at.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// The text is not SQL we parse (with the position, as the parser reports it).
    #[error("syntax error: {0}")]
    Parse(String),
    /// A construct Tern does not run (named in the message).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The table API refused or failed (unknown table, wrong type, read-only replica…).
    #[error("{0}")]
    Table(#[from] tern_table::Error),
    /// Planning or running the query failed (unknown column, type mismatch…).
    #[error("{}", query_message(.0))]
    Query(DataFusionError),
}

fn query_message(e: &DataFusionError) -> String {
    // DataFusion's own wrapping ("External error: …") says nothing to a user.
    match e.find_root() {
        DataFusionError::External(inner) => inner.to_string(),
        root => root.to_string(),
    }
}

impl From<DataFusionError> for SqlError {
    fn from(mut e: DataFusionError) -> Self {
        // The inner error names the problem; DataFusion's context ("UPDATE operation on
        // table 't'") adds nothing the statement does not say.
        while let DataFusionError::Context(_, inner) = e {
            e = *inner;
        }
        match e {
            DataFusionError::SQL(p, _) => SqlError::Parse(p.to_string()),
            DataFusionError::External(inner) => match inner.downcast::<tern_table::Error>() {
                Ok(t) => SqlError::Table(*t),
                Err(other) => SqlError::Query(DataFusionError::External(other)),
            },
            DataFusionError::NotImplemented(m) => SqlError::Unsupported(m),
            other => {
                // A table error wrapped deeper (in a context or a shared error).
                if let DataFusionError::External(inner) = other.find_root()
                    && inner.downcast_ref::<tern_table::Error>().is_some()
                {
                    return SqlError::Query(other);
                }
                SqlError::Query(other)
            }
        }
    }
}

impl SqlError {
    /// The table API's error behind this one, wherever DataFusion wrapped it.
    pub fn table_error(&self) -> Option<&tern_table::Error> {
        match self {
            SqlError::Table(t) => Some(t),
            SqlError::Query(e) => match e.find_root() {
                DataFusionError::External(inner) => inner.downcast_ref::<tern_table::Error>(),
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether the statement was refused because the database takes no writes here (a
    /// secondary replica, or a fenced/paused primary): the API answers 409 with where to
    /// write instead.
    pub fn is_write_refusal(&self) -> bool {
        matches!(
            self.table_error(),
            Some(tern_table::Error::ReadOnlyReplica { .. } | tern_table::Error::NotWritable(_))
        )
    }

    /// Whether the statement itself is at fault (bad SQL, unknown name, wrong type,
    /// unsupported construct) rather than the service.
    pub fn is_bad_statement(&self) -> bool {
        match self {
            SqlError::Parse(_) | SqlError::Unsupported(_) => true,
            SqlError::Query(e) => !matches!(
                e.find_root(),
                DataFusionError::External(_)
                    | DataFusionError::IoError(_)
                    | DataFusionError::ResourcesExhausted(_)
                    | DataFusionError::Internal(_)
            ),
            SqlError::Table(t) => matches!(
                t,
                tern_table::Error::UnknownColumn { .. }
                    | tern_table::Error::MissingColumn { .. }
                    | tern_table::Error::TypeMismatch { .. }
                    | tern_table::Error::NullInNonNullable { .. }
                    | tern_table::Error::InvalidSchema { .. }
                    | tern_table::Error::UnknownTable { .. }
                    | tern_table::Error::VersionNotRetained { .. }
                    | tern_table::Error::BadInput { .. }
            ),
        }
    }
}
