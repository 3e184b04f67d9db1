//! embslim: BERT-like text encoders on small devices, with the token-embedding table
//! compressed into a memory-mapped factor file.
//!
//! Data flow on the device: [`tokenize`] -> embed (rows decoded from the mapped [`format`]
//! file) -> encode (tract) -> pool -> head. Host-only training and export live behind the
//! `train` feature.

pub mod bundle;
pub mod code;
pub mod corpus;
pub mod embed;
pub mod encode;
pub mod error;
pub mod format;
pub mod footprint;
pub mod fsutil;
pub mod head;
pub mod malloc;
pub mod manifest;
pub mod mmap;
pub mod pool;
pub mod tokenize;

#[cfg(feature = "train")]
pub mod export;
#[cfg(feature = "train")]
pub mod train;

pub use bundle::{Bundle, Embedded, OpenOptions};
pub use encode::Int4;
pub use error::{Error, Result};
