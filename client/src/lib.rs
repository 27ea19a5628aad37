//! shoal-client: talk to `shoald` over its local Unix socket.
//!
//! `shoald` runs next to the application and serves a fleet-coherent cache (L1 in
//! the daemon, L2 in Redis), sessions and rate limits. This crate is its async
//! client: one [`Client`] per process holds one multiplexed connection that every
//! task shares (clone it freely), pipelines requests, reconnects on its own, and
//! bounds every call with a timeout. The wire contract is `PROTOCOL.md`; the
//! [`proto`] module implements it and is the only code that knows MessagePack.
//!
//! Connect once at startup:
//!
//! ```no_run
//! # async fn demo() -> shoal_client::Result<()> {
//! use std::time::Duration;
//! use shoal_client::Client;
//!
//! let client = Client::connect("/run/shoal/shoal.sock").await?;
//! // Or with settings:
//! let client = Client::builder("/run/shoal/shoal.sock")
//!     .timeout(Duration::from_millis(500))
//!     .connect()
//!     .await?;
//! println!("connected to node {}", client.server_info().node);
//! # Ok(()) }
//! ```
//!
//! Typed values are any serde type, stored as MessagePack with named fields (so the
//! Python and Node clients can read them):
//!
//! ```no_run
//! # async fn demo(client: shoal_client::Client) -> shoal_client::Result<()> {
//! use std::time::Duration;
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct User {
//!     name: String,
//!     admin: bool,
//! }
//!
//! let alice = User { name: "alice".into(), admin: false };
//! client.set("user:1", &alice, Some(Duration::from_secs(60))).await?;
//! let user: Option<User> = client.get("user:1").await?;
//! assert!(user.is_some_and(|u| u.name == "alice"));
//!
//! // Raw bytes, for values you encode yourself:
//! client.set_raw("blob:7", vec![1u8, 2, 3], None).await?;
//! let blob = client.get_raw("blob:7").await?;
//!
//! // Fleet-wide deletes:
//! client.invalidate(["user:1", "blob:7"]).await?;
//! # Ok(()) }
//! ```
//!
//! Cache-aside with [`Client::get_or_load`]: on a miss, one caller in the whole
//! fleet runs the loader while the others wait for its fill, and when the cache is
//! unavailable the loader's value is returned instead of an error:
//!
//! ```no_run
//! # async fn demo(client: shoal_client::Client) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Profile {
//!     bio: String,
//! }
//!
//! async fn load_profile(id: u64) -> Result<Profile, std::io::Error> {
//!     // ... query the database ...
//! # let _ = id;
//!     Ok(Profile { bio: String::new() })
//! }
//!
//! let profile: Profile = client
//!     .get_or_load("profile:42", Some(Duration::from_secs(300)), || load_profile(42))
//!     .await?;
//! # let _ = profile;
//! # Ok(()) }
//! ```
//!
//! Errors say whether retrying can help: [`Error::is_retryable`].
//!
//! On the same host, a client also maps the daemon's shared-memory L1 (the
//! [`shm`] module) and answers `get` hits from it without a system call, falling
//! back to the socket on any doubt; [`ClientConfig::shm`] turns that off.

// `unsafe` is allowed in exactly one module, `shm::raw` (mapping the segment).
#![deny(unsafe_code)]

mod client;
mod conn;
mod error;
pub mod keyslot;
mod load;
pub mod lock;
pub mod proto;
pub mod ratelimit;
pub mod session;
pub mod shm;
mod shm_local;

pub use client::{Client, ClientBuilder, ClientConfig, SetOptions, DEFAULT_SOCKET_PATH};
pub use error::{Error, Result};
pub use load::LoadError;
pub use lock::{LockAcquired, LockGuard};
pub use proto::{ErrorCode, GetResult, HelloResult, Op, Source};
pub use ratelimit::{Acquired, Concurrent, Decision, Reservation};
pub use session::{Session, SessionCookie, SessionOptions};
pub use shm_local::ShmStats;
