//! tiktoken counts over compact tables generated at build time (build.rs)
//! from tiktoken-rs's vocabularies: nothing is built when a VM starts or
//! first counts; the tables are read in place from the module's data.

use tollgate_core::tiktoken::{CompactVocab, Tokenizer};
use tollgate_core::tokens::{BytesPerToken, CountTokens, Encoding};

static O200K: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/o200k_base.tkv"));
static CL100K: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/cl100k_base.tkv"));

/// A tiktoken encoding.
#[derive(Debug, Clone, Copy)]
pub struct Tiktoken(pub Encoding);

fn vocab(encoding: Encoding) -> Option<CompactVocab<'static>> {
    CompactVocab::new(match encoding {
        Encoding::O200kBase => O200K,
        Encoding::Cl100kBase => CL100K,
    })
}

impl CountTokens for Tiktoken {
    fn count(&self, text: &str) -> u64 {
        match vocab(self.0) {
            Some(vocab) => Tokenizer { encoding: self.0, vocab }.count(text),
            // Only if the build wrote a broken table; the tests rule it out.
            None => BytesPerToken.count(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_tables_count_like_tiktoken_rs() {
        for (encoding, reference) in [
            (Encoding::O200kBase, tiktoken_rs::o200k_base_singleton()),
            (Encoding::Cl100kBase, tiktoken_rs::cl100k_base_singleton()),
        ] {
            let table = vocab(encoding).unwrap();
            assert!(table.len() > 100_000);
            for text in ["tiktoken is great!", "お誕生日おめでとう", "Say hello to the gateway", "don't\r\n  x  ", ""] {
                assert_eq!(Tiktoken(encoding).count(text), reference.encode_ordinary(text).len() as u64, "{encoding:?} {text:?}");
            }
        }
        assert_eq!(Tiktoken(Encoding::O200kBase).count("tiktoken is great!"), 6);
    }
}
