#!/usr/bin/env -S node --no-warnings
// Cargo test runner for wasm32-wasip1: runs a libtest binary under Node's
// built-in WASI (preview1), so the filter logic's tests also run on the
// target the filters ship for. Cargo calls: node wasi-runner.mjs <test.wasm> [args…]
import { readFile } from "node:fs/promises";
import { WASI } from "node:wasi";
import { argv, env, exit } from "node:process";

const [, , wasmPath, ...args] = argv;
const wasi = new WASI({
  version: "preview1",
  args: [wasmPath, ...args],
  env,
  // Tests read fixtures relative to the crate directory, as natively.
  preopens: { ".": ".", "/": "/" },
  returnOnExit: true,
});
const module = await WebAssembly.compile(await readFile(wasmPath));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
exit(wasi.start(instance));
