//! Logic shared by Tollgate's filters. No proxy-wasm dependency: everything
//! here is tested natively and on wasm32-wasip1.

pub mod config;
pub mod errors;
pub mod prices;
pub mod request;
pub mod sse;
pub mod tiktoken;
pub mod tokens;
pub mod translate;
mod unicode_classes;
pub mod usage;
pub mod virtual_keys;
