//! Writes tiktoken's o200k_base and cl100k_base vocabularies, as tiktoken-rs
//! has them, into the compact table format (`tollgate_core::tiktoken::CompactVocab`)
//! the meter embeds: a VM then counts tokens without building anything.

use std::error::Error;
use std::path::PathBuf;
use tollgate_core::tiktoken::CompactVocab;

fn main() -> Result<(), Box<dyn Error>> {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    for (name, bpe) in [("o200k_base", tiktoken_rs::o200k_base()?), ("cl100k_base", tiktoken_rs::cl100k_base()?)] {
        // Ordinary ranks are 0..n; the first rank that decodes to nothing ends them.
        let tokens: Vec<Vec<u8>> = (0u32..).map_while(|rank| bpe.decode_bytes(&[rank]).ok()).collect();
        std::fs::write(out.join(format!("{name}.tkv")), CompactVocab::build(&tokens))?;
    }
    println!("cargo::rerun-if-changed=build.rs");
    Ok(())
}
