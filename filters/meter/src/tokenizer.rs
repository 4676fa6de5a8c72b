//! tiktoken counters, built lazily: a VM pays for an encoding's tables only
//! when it first counts with it, and only for the encodings it uses.

use std::sync::OnceLock;
use tiktoken_rs::CoreBPE;
use tollgate_core::tokens::{BytesPerToken, CountTokens, Encoding};

/// A tiktoken encoding, initialised on first use (once per VM).
#[derive(Debug, Clone, Copy)]
pub struct Tiktoken(pub Encoding);

fn cell(encoding: Encoding) -> &'static OnceLock<Option<CoreBPE>> {
    static O200K: OnceLock<Option<CoreBPE>> = OnceLock::new();
    static CL100K: OnceLock<Option<CoreBPE>> = OnceLock::new();
    match encoding {
        Encoding::O200kBase => &O200K,
        Encoding::Cl100kBase => &CL100K,
    }
}

fn build(encoding: Encoding) -> Option<CoreBPE> {
    let built = match encoding {
        Encoding::O200kBase => tiktoken_rs::o200k_base(),
        Encoding::Cl100kBase => tiktoken_rs::cl100k_base(),
    };
    match built {
        Ok(bpe) => Some(bpe),
        Err(e) => {
            log::error!("meter: cannot load {}: {e}", encoding.name());
            None
        }
    }
}

/// Builds an encoding's tables now if they are not built yet; returns
/// whether this call built them.
pub fn load(encoding: Encoding) -> bool {
    let mut built = false;
    cell(encoding).get_or_init(|| {
        built = true;
        build(encoding)
    });
    built
}

/// Whether an encoding's tables are built in this VM.
pub fn loaded(encoding: Encoding) -> bool {
    cell(encoding).get().is_some()
}

impl CountTokens for Tiktoken {
    fn count(&self, text: &str) -> u64 {
        if text.is_empty() {
            return 0;
        }
        match cell(self.0).get_or_init(|| build(self.0)) {
            Some(bpe) => bpe.encode_ordinary(text).len() as u64,
            None => BytesPerToken.count(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_like_openai() {
        // Counts printed in the openai-cookbook token-counting notebook.
        assert_eq!(Tiktoken(Encoding::O200kBase).count("tiktoken is great!"), 6);
        assert_eq!(Tiktoken(Encoding::Cl100kBase).count("お誕生日おめでとう"), 9);
        assert_eq!(Tiktoken(Encoding::O200kBase).count("お誕生日おめでとう"), 8);
        assert_eq!(Tiktoken(Encoding::O200kBase).count(""), 0);
        assert!(loaded(Encoding::O200kBase));
        assert!(!load(Encoding::O200kBase), "already built");
    }
}
