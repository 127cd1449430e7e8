//! Tern's message service (DESIGN.md §8): generic messages between deployments, carried
//! as encrypted files in the receiver's replication bucket.
//!
//! Each ordered pair of deployments (sender → receiver) is a **channel**. The sender holds
//! only a write-only identity for `from/<sender>/` of the receiver's bucket; the receiver
//! reads, processes and deletes. Nothing else connects them.
//!
//! ```text
//!  sender (d1)                              receiver (d2): replication bucket of d2
//!  create ─▶ Preparing ─(bodies)─▶ ReadyToSend     from/d1/body/<id>/<n>   body files
//!  worker: claim batch ─▶ Sending ─PUT(Create)─▶   from/d1/msg/<seq>.msg   message files
//!          Sent                                        │ poll expected name
//!                                 Received ◀───────────┘ verify, 1 transaction
//!                                 ReadyForProcessing ─▶ Processing (pool, handler)
//!                                 ReadyForCleanup ─▶ cleaner deletes files, then rows
//! ```
//!
//! | module | what |
//! |---|---|
//! | [`message`] | [`GlobalMessage`], the versioned message-file plaintext |
//! | [`registry`] | message types, [`Handler`]s, exactly-once [`Commit`]s |
//! | [`sender`] | [`Sender`]: create, attach bodies, mark ready; the file chain |
//! | [`receiver`] | [`Receiver`]: poll, verify, persist; rejections |
//! | [`processor`] | [`Processor`]: the worker pool running handlers |
//! | [`cleaner`] | [`Cleaner`]: deletes handled files and rows |
//! | [`service`] | [`Context`] (one deployment's service), [`MessagingConfig`], channels |
//! | [`keys`] | per-channel keys and the diversifier acceptance window |
//! | [`state`] | what is kept in the metadata store, and where |
//! | [`worker`] | the [`Worker`] shape every background loop has |
//! | [`crash`] | per-instance named crash points for tests |
//! | [`depths`] | queue depths per channel, from the indexes of live work (the monitor) |
//!
//! # Guarantees
//!
//! * **Chain continuity**: message files of a channel are numbered 1, 2, 3, … with no gap
//!   and no reuse, across restarts; each is created once (`PutMode::Create`); each names
//!   the next file and the diversifier its key will be wrapped under.
//! * **Exactly-once effect**: a file is persisted once (its messages and the channel's
//!   advance in one transaction); a handler's metadata effect commits with the message's
//!   completion; handlers' external effects must be idempotent by message id.
//! * **Rejections never apply anything** and never stop the receiver: a bad file stalls
//!   only its channel and is recorded; a bad message is dropped from an otherwise good
//!   file. See [`receiver`].
//! * **Keys**: every message and body file has its own random DEK wrapped under
//!   `HMAC(GMK, diversifier)`, bound to the channel and the file's path; key material is
//!   never logged.

//!
//! # Wiring one deployment (what the daemon does)
//!
//! ```no_run
//! # async fn demo(
//! #     meta: tern_meta::MetaStore,
//! #     wrap_keys: std::sync::Arc<tern_crypto::CachedWrapKeys>,
//! #     peer_bucket: std::sync::Arc<dyn object_store::ObjectStore>,
//! #     own_bucket: std::sync::Arc<dyn object_store::ObjectStore>,
//! #     handler: std::sync::Arc<dyn tern_messaging::Handler>,
//! #     genesis_from_peer: tern_messaging::ChannelGenesis,
//! # ) -> tern_messaging::Result<()> {
//! use std::time::Duration;
//! use tern_messaging::*;
//! use tern_storage::layout::DeploymentId;
//!
//! let me = DeploymentId::new("d1").unwrap();
//! let peer = DeploymentId::new("d2").unwrap();
//! let registry = Registry::new().with("heartbeat", handler)?;
//! let ctx = Context::new(me, meta, wrap_keys, tern_clock::SystemClock::shared(),
//!     tern_crypto::SystemRandom::shared(), registry, MessagingConfig::default())?;
//! // Channels: ours to the peer (its genesis goes to the peer), the peer's to us.
//! let genesis = ctx.create_outbound(&peer).await?;
//! ctx.register_inbound(&genesis_from_peer).await?;
//! # let _ = genesis;
//!
//! let (stop_tx, stop) = tokio::sync::watch::channel(false);
//! let mut sender = Sender::new(ctx.clone(), peer.clone(), peer_bucket.clone());
//! let api = Sender::new(ctx.clone(), peer, peer_bucket).sharing_waker(sender.waker());
//! let mut receiver = Receiver::new(ctx.clone(), own_bucket.clone());
//! let mut processor = Processor::new(ctx.clone(), own_bucket.clone());
//! let mut cleaner = Cleaner::new(ctx.clone(), own_bucket);
//! let backoff = Duration::from_secs(1);
//! tokio::spawn({ let stop = stop.clone(); async move { worker::run(&mut sender, stop, backoff).await } });
//! tokio::spawn({ let stop = stop.clone(); async move { worker::run(&mut receiver, stop, backoff).await } });
//! tokio::spawn({ let stop = stop.clone(); async move { worker::run(&mut processor, stop, backoff).await } });
//! tokio::spawn(async move { worker::run(&mut cleaner, stop, backoff).await });
//!
//! api.send(Draft::new("heartbeat", "{}")).await?;
//! # let _ = stop_tx;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cleaner;
pub mod cleanup;
pub mod crash;
pub mod depths;
mod error;
pub mod failed;
pub mod keys;
pub mod message;
pub mod processor;
pub mod receiver;
pub mod registry;
pub mod resync;
pub mod sender;
pub mod service;
pub mod state;
pub mod worker;

pub use cleaner::Cleaner;
pub use cleanup::CleanupPayload;
pub use crash::CrashPoints;
pub use depths::{ChannelDepth, Direction};
pub use error::{Error, ErrorKind, Result};
pub use message::{BodyRef, GlobalMessage, MessageFile, MessageType};
pub use processor::Processor;
pub use receiver::Receiver;
pub use registry::{Bodies, CLEANUP_TYPE, Commit, Handler, HandlerError, RESEND_TYPE, Registry};
pub use resync::{ResendPayload, Resynced};
pub use sender::{Draft, Sender};
pub use service::{ChannelGenesis, Context, Counters, MessagingConfig, channel_name};
pub use state::{InState, OutState, RejectReason, Rejection};
pub use worker::{Worker, WorkerState, WorkerStatus};
