//! What can go wrong calling an agent.

/// A failed call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0:?} is not an address; give host:port such as 127.0.0.1:8080 (plain http)")]
    BadAddress(String),
    #[error("the API token is not a valid header value")]
    BadToken,
    #[error(
        "cannot reach the agent API at {api} ({cause}). Is an agent running there? \
         Start one with `armillary agent`, or a local demo system with `armillary dev`; \
         point --api or ARMILLARY_API at another address"
    )]
    Unreachable { api: String, cause: String },
    #[error("the agent API at {api} did not answer in time; is the agent overloaded?")]
    Timeout { api: String },
    #[error("request to the agent API at {api} failed: {cause}")]
    Transport { api: String, cause: String },
    /// The agent refused or failed the call: its status and message, and
    /// the WS-Eventing fault's name for an EVN fault.
    #[error("{message}")]
    Api {
        status: u16,
        message: String,
        fault: Option<String>,
    },
    #[error(
        "the agent at {api} sent a reply that is not what was asked for ({why}); is this an Armillary API?"
    )]
    Decode { api: String, why: String },
    #[error("the agent sent a stream record over {0} KiB")]
    RecordTooLarge(usize),
    #[error("the agent closed the stream (it is shutting down?)")]
    StreamClosed,
}

impl ClientError {
    /// Whether the caller's input was refused (a 4xx, or a bad address):
    /// what a command-line tool reports as a usage error.
    pub fn is_bad_input(&self) -> bool {
        match self {
            ClientError::Api { status, .. } => (400..500).contains(status),
            ClientError::BadAddress(_) | ClientError::BadToken => true,
            _ => false,
        }
    }

    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The WS-Eventing fault's name of an EVN fault.
    pub fn fault(&self) -> Option<&str> {
        match self {
            ClientError::Api { fault, .. } => fault.as_deref(),
            _ => None,
        }
    }
}
