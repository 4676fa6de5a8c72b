//! The router as a proxy-wasm module: only the glue. Both roots (downstream,
//! and `tollgate.router.upstream` for per-attempt work) live in this module.

proxy_wasm::main! {{
    tollgate_host::glue::start::<tollgate_router::RouterFactory>();
}}
