//! The guard as a proxy-wasm module: only the glue.

proxy_wasm::main! {{
    tollgate_host::glue::start::<tollgate_guard::GuardFactory>();
}}
