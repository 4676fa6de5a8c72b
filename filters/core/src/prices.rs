//! Prices per model and the cost of a request, in integer nano-dollars so that
//! sums are exact.
//!
//! Prices are quoted as providers quote them, in US dollars per million tokens.
//! A price of `p` $/Mtok is `p × 1000` nano-dollars per token, so a price with
//! at most three decimals (0.001 $/Mtok) is an exact integer, and the cost of a
//! request, tokens × price, is an exact integer number of nano-dollars. Totals
//! kept in nano-dollars are exact up to 18 billion dollars (u64).

use crate::usage::Usage;
use serde::Deserialize;

/// Nano-dollars in a dollar.
pub const NANOS_PER_DOLLAR: u64 = 1_000_000_000;

/// A model's prices as written in configuration: dollars per million tokens.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PriceConfig {
    /// Prompt tokens, $/Mtok.
    pub input: f64,
    /// Completion tokens, $/Mtok.
    pub output: f64,
    /// Prompt tokens served from the provider's prompt cache, $/Mtok
    /// (default: the input price).
    #[serde(default)]
    pub cached_input: Option<f64>,
}

/// A model's prices compiled to nano-dollars per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Price {
    pub input: u64,
    pub output: u64,
    pub cached_input: u64,
}

/// Converts a price in $/Mtok to nano-dollars per token; refuses negative,
/// non-finite, absurd prices and prices finer than 0.001 $/Mtok.
pub fn nanos_per_token(dollars_per_million: f64) -> Result<u64, String> {
    if !dollars_per_million.is_finite() || dollars_per_million < 0.0 {
        return Err(format!("price {dollars_per_million} must be a non-negative number"));
    }
    if dollars_per_million > 1_000_000.0 {
        return Err(format!("price {dollars_per_million} $/Mtok is not plausible (max 1000000)"));
    }
    let nanos = dollars_per_million * 1000.0;
    let rounded = nanos.round();
    if (nanos - rounded).abs() > 1e-6 {
        return Err(format!(
            "price {dollars_per_million} $/Mtok has more than 3 decimals (prices are exact to 0.001 $/Mtok)"
        ));
    }
    // In range and integral: the cast is exact.
    Ok(rounded as u64)
}

impl PriceConfig {
    /// Compiles the prices; the error names the offending sub-field.
    pub fn compile(&self) -> Result<Price, (&'static str, String)> {
        let input = nanos_per_token(self.input).map_err(|e| ("input", e))?;
        let output = nanos_per_token(self.output).map_err(|e| ("output", e))?;
        let cached_input = match self.cached_input {
            Some(p) => nanos_per_token(p).map_err(|e| ("cached_input", e))?,
            None => input,
        };
        Ok(Price { input, output, cached_input })
    }
}

impl Price {
    /// Cost of `usage` in nano-dollars: uncached input at the input price,
    /// cached input at the cached price, output at the output price.
    /// Saturates rather than overflowing.
    pub fn cost(&self, usage: &Usage) -> u64 {
        let cached = usage.cached_input.min(usage.input);
        let uncached = usage.input - cached;
        uncached
            .saturating_mul(self.input)
            .saturating_add(cached.saturating_mul(self.cached_input))
            .saturating_add(usage.output.saturating_mul(self.output))
    }
}

/// Formats nano-dollars as a decimal dollar amount with 9 decimals
/// (`1234` → `0.000001234`).
pub fn format_dollars(nanos: u64) -> String {
    format!("{}.{:09}", nanos / NANOS_PER_DOLLAR, nanos % NANOS_PER_DOLLAR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_convert_exactly() {
        assert_eq!(nanos_per_token(0.0), Ok(0));
        assert_eq!(nanos_per_token(0.15), Ok(150));
        assert_eq!(nanos_per_token(2.5), Ok(2500));
        assert_eq!(nanos_per_token(0.075), Ok(75));
        assert_eq!(nanos_per_token(15.0), Ok(15_000));
        assert_eq!(nanos_per_token(0.001), Ok(1));
        assert!(nanos_per_token(0.0001).is_err());
        assert!(nanos_per_token(-1.0).is_err());
        assert!(nanos_per_token(f64::NAN).is_err());
        assert!(nanos_per_token(f64::INFINITY).is_err());
        assert!(nanos_per_token(1e12).is_err());
    }

    #[test]
    fn cost_is_tokens_times_price() {
        let price = PriceConfig { input: 3.0, output: 15.0, cached_input: Some(0.3) }.compile().unwrap();
        assert_eq!(price, Price { input: 3000, output: 15_000, cached_input: 300 });
        let usage = Usage { input: 1000, output: 200, cached_input: 400 };
        // 600 × 3000 + 400 × 300 + 200 × 15000 nano-dollars
        assert_eq!(price.cost(&usage), 1_800_000 + 120_000 + 3_000_000);
        assert_eq!(format_dollars(price.cost(&usage)), "0.004920000");
    }

    #[test]
    fn cached_price_defaults_to_input_and_cached_is_capped() {
        let price = PriceConfig { input: 1.0, output: 2.0, cached_input: None }.compile().unwrap();
        assert_eq!(price.cached_input, 1000);
        let odd = Usage { input: 5, output: 0, cached_input: 50 };
        assert_eq!(price.cost(&odd), 5000);
        let e = PriceConfig { input: 1.0, output: 1.23456, cached_input: None }.compile().unwrap_err();
        assert_eq!(e.0, "output");
    }

    #[test]
    fn cost_saturates() {
        let price = Price { input: u64::MAX, output: u64::MAX, cached_input: u64::MAX };
        assert_eq!(price.cost(&Usage { input: 10, output: 10, cached_input: 0 }), u64::MAX);
    }

    #[test]
    fn dollars_format() {
        assert_eq!(format_dollars(0), "0.000000000");
        assert_eq!(format_dollars(1), "0.000000001");
        assert_eq!(format_dollars(5_250_000_000), "5.250000000");
    }
}
