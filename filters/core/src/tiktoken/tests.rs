//! The hand-written pre-tokenizers and merges against tiktoken-rs itself (its
//! regexes through fancy-regex, its counts), the Unicode tables against
//! regex-syntax's.

use super::*;
use std::collections::HashMap;
use std::sync::OnceLock;

const O200K_PATTERN: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);
const CL100K_PATTERN: &str =
    r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s";

fn regex(encoding: Encoding) -> &'static fancy_regex::Regex {
    static O: OnceLock<fancy_regex::Regex> = OnceLock::new();
    static C: OnceLock<fancy_regex::Regex> = OnceLock::new();
    match encoding {
        Encoding::O200kBase => O.get_or_init(|| fancy_regex::Regex::new(O200K_PATTERN).unwrap()),
        Encoding::Cl100kBase => C.get_or_init(|| fancy_regex::Regex::new(CL100K_PATTERN).unwrap()),
    }
}

fn reference(encoding: Encoding) -> &'static tiktoken_rs::CoreBPE {
    match encoding {
        Encoding::O200kBase => tiktoken_rs::o200k_base_singleton(),
        Encoding::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
    }
}

/// The encoding's tokens by rank, as tiktoken-rs has them.
fn tokens(encoding: Encoding) -> Vec<Vec<u8>> {
    let bpe = reference(encoding);
    (0u32..).map_while(|rank| bpe.decode_bytes(&[rank]).ok()).take_while(|_| true).collect::<Vec<_>>()
        .into_iter()
        .take(match encoding { Encoding::O200kBase => 199_998, Encoding::Cl100kBase => 100_256 })
        .collect()
}

fn table(encoding: Encoding) -> &'static [u8] {
    static O: OnceLock<Vec<u8>> = OnceLock::new();
    static C: OnceLock<Vec<u8>> = OnceLock::new();
    let cell = match encoding {
        Encoding::O200kBase => &O,
        Encoding::Cl100kBase => &C,
    };
    cell.get_or_init(|| CompactVocab::build(&tokens(encoding)))
}

fn tokenizer(encoding: Encoding) -> Tokenizer<'static> {
    Tokenizer { encoding, vocab: CompactVocab::new(table(encoding)).unwrap() }
}

const ENCODINGS: [Encoding; 2] = [Encoding::O200kBase, Encoding::Cl100kBase];

const CORPUS: &[&str] = &[
    "", " ", "\n", "Hello world", "Say hello to the gateway", "tiktoken is great!",
    "don't DON'T I'M we'LL they'Re You'VE it'S x'ſ ſ'ſ 'll 'd' ''s",
    "  leading", "trailing  ", "trailing \n", "a\r\nb", "a\n\n\nb", "a \n b", "a  \t b", "tabs\t\tx\t",
    "numbers 12345678 1.5 -3e10 0x1F", "$100,000.00 (approx.)", "ⅫⅧ roman, ٣٤٥ arabic, ½ fraction",
    "emoji 😀👍🏽🇫🇷 family 👨‍👩‍👧", "中文字符测试，标点。", "日本語のテキスト", "한국어 텍스트", "Ελληνικά κείμενα", "русский ТЕКСТ",
    "عربى مكتوب", "עברית", "हिन्दी पाठ", "ﬁ ligature ǅungla Ǆ ǆ", "e\u{301}te \u{301}alone a\u{903}b",
    "mixed CASEword camelCase HTTPServer XMLHttpRequest iPhone",
    "URL https://example.com/a/b?c=d&e=f#g path/to//file/ a/b//c\n/",
    "code: fn main() {\n    println!(\"hi\");\n}\r\n\tif x >= 10 { return; }\n",
    "!!!??? ... --- *** ### @@@ \u{a0}nbsp\u{2003}em\u{3000}ideo \u{2028}ls \u{85}nel",
    "\u{1c}\u{1f} ctrl x\u{200b}y zero width \u{feff}bom",
    "<|endoftext|> special <|endofprompt|>", "a'b c'D 'S", "   \n\n   \r\n  ", "x\r\r\ny", "end with newline\n",
    "λx. x+1 ∀∃∈ ≤≥ → ← ∑", "The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX!",
];

/// Deterministic strings over characters of every class the patterns tell apart.
fn generated(count: usize) -> Vec<String> {
    let pool: Vec<char> = "aBzZéÉǅʰ中\u{301}\u{903}1٣Ⅻ½ \t\n\r\u{a0}\u{2028}'sStſlLdvermM!./-😀\u{200b}\u{0}\u{1c}x"
        .chars()
        .collect();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    (0..count)
        .map(|_| {
            let len = (next() % 40) as usize;
            (0..len).map(|_| pool[(next() % pool.len() as u64) as usize]).collect()
        })
        .collect()
}

#[test]
fn unicode_classes_match_regex_syntax() {
    use regex_syntax::hir::{Class as HirClass, HirKind};
    let ranges = |pattern: &str| -> Vec<(u32, u32)> {
        match regex_syntax::Parser::new().parse(pattern).unwrap().kind() {
            HirKind::Class(HirClass::Unicode(c)) => c.ranges().iter().map(|r| (r.start() as u32, r.end() as u32)).collect(),
            other => panic!("{other:?}"),
        }
    };
    let mut class = vec![0u8; 0x11_0000];
    for (pattern, id) in [(r"[\p{Lu}\p{Lt}]", 1), (r"\p{Ll}", 2), (r"[\p{Lm}\p{Lo}]", 3), (r"\p{M}", 4), (r"\p{N}", 5), (r"\s", 6)] {
        for (a, b) in ranges(pattern) {
            for c in a..=b {
                assert_eq!(class[c as usize], 0, "{pattern} overlaps at {c:x}");
                class[c as usize] = id;
            }
        }
    }
    let mut runs = Vec::new();
    for (c, &id) in class.iter().enumerate() {
        if runs.last().is_none_or(|&(_, last)| last != id) {
            runs.push((c as u32, id));
        }
    }
    assert_eq!(runs, RUNS, "regenerate src/unicode_classes.rs");
    for c in (0u32..0x80).filter_map(char::from_u32) {
        assert_eq!(Class::of(c), Class::from_id(class[c as usize]), "ASCII fast path for {c:?}");
    }
}

#[test]
fn pieces_match_tiktokens_regexes() {
    let texts: Vec<String> = CORPUS.iter().map(|s| s.to_string()).chain(generated(20_000)).collect();
    for encoding in ENCODINGS {
        for text in &texts {
            let expected: Vec<&str> = regex(encoding).find_iter(text).map(|m| m.unwrap().as_str()).collect();
            let got: Vec<&str> = pieces(encoding, text).collect();
            assert_eq!(got, expected, "{encoding:?} {text:?}");
        }
    }
}

#[test]
fn counts_match_tiktoken_rs() {
    let texts: Vec<String> = CORPUS.iter().map(|s| s.to_string()).chain(generated(3000)).collect();
    for encoding in ENCODINGS {
        let ours = tokenizer(encoding);
        for text in &texts {
            assert_eq!(ours.count(text), reference(encoding).encode_ordinary(text).len() as u64, "{encoding:?} {text:?}");
        }
    }
    // Published counts (openai-cookbook).
    assert_eq!(tokenizer(Encoding::O200kBase).count("tiktoken is great!"), 6);
    assert_eq!(tokenizer(Encoding::Cl100kBase).count("お誕生日おめでとう"), 9);
    assert_eq!(tokenizer(Encoding::O200kBase).count("お誕生日おめでとう"), 8);
}

#[test]
fn long_pieces_merge_the_same_both_ways() {
    struct Map(HashMap<Vec<u8>, u32>);
    impl Ranks for Map {
        fn rank(&self, bytes: &[u8]) -> Option<u32> {
            self.0.get(bytes).copied()
        }
    }
    let vocab = tokenizer(Encoding::Cl100kBase).vocab;
    let map = Map((0..vocab.len() as u32).map(|r| (vocab.token(r).unwrap().to_vec(), r)).collect());
    for text in ["abcdefghij".repeat(30), "😀".repeat(50), "xyzzy".repeat(100), generated(40).concat()] {
        let bytes = text.as_bytes();
        assert_eq!(merge_small(&vocab, bytes), merge_large(&vocab, bytes), "{text:?}");
        assert_eq!(merge_small(&map, bytes), merge_large(&map, bytes));
    }
    // One long piece (no spaces) counts like tiktoken-rs, and fast.
    let long = "abcdefghijklmnopqrstuvwxyz".repeat(2000);
    assert_eq!(tokenizer(Encoding::Cl100kBase).count(&long), reference(Encoding::Cl100kBase).encode_ordinary(&long).len() as u64);
}

#[test]
fn tables_are_checked() {
    assert!(CompactVocab::new(b"nope").is_none());
    assert!(CompactVocab::new(b"TKV1\x05\0\0\0\x03\0\0\0").is_none(), "truncated");
    let data = CompactVocab::build(&[b"a".to_vec(), b"b".to_vec(), b"ab".to_vec()]);
    let vocab = CompactVocab::new(&data).unwrap();
    assert_eq!(vocab.len(), 3);
    assert_eq!(vocab.rank(b"ab"), Some(2));
    assert_eq!(vocab.rank(b"ba"), None);
    assert_eq!(vocab.token(1), Some(&b"b"[..]));
    assert_eq!(vocab.token(3), None);
    assert_eq!(bpe_count(&vocab, b"abab"), 2);
    assert_eq!(bpe_count(&vocab, b""), 0);
}
