//! The MSNP24 wire protocol with no I/O: frames, formatted messages, addresses, error codes and the
//! typed XML bodies of every command. Everything here is synchronous and safe to feed hostile bytes.

pub mod challenge;
pub mod error;
pub mod formatted;
pub mod frame;
pub mod mri;
pub mod xml;

pub use error::ErrorCode;
pub use formatted::{FormattedMessage, FormattedMessageRef};
pub use frame::{Frame, FrameError, Headers, HeadersRef, Limits, Payload, PayloadRef};
pub use mri::{AccountName, Epid, Mri};
