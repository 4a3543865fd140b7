//! `trades`: stock trades on `trades/<SYMBOL>`, type `trade`, for each
//! symbol of `demo_symbols`: `{"symbol", "price", "change", "volume"}`.
//! Symbol `i` (from 0, in the order configured) trades every `i + 1`
//! seconds, so with the default `AAPL,GOOGL` AAPL ticks every second and
//! GOOGL every two.
//!
//! Several topics under one prefix at different rates is what shows the
//! difference between subscribing to `trades/AAPL` and to `trades/*`. Prices
//! walk from a plausible start, in log space so moves are proportional, and
//! revert slowly to it so a long demo never drifts to absurd prices.

use std::time::Duration;

use fastrand::Rng;
use serde::Serialize;

use super::walk::Walk;
use super::{Draft, Producer, round};
use crate::hub::Hub;

const PERIOD: Duration = Duration::from_secs(1);

/// Rough prices for well-known tickers; others start at a random price.
const KNOWN: [(&str, f64); 8] = [
    ("AAPL", 190.0),
    ("GOOGL", 140.0),
    ("MSFT", 420.0),
    ("AMZN", 180.0),
    ("NVDA", 120.0),
    ("TSLA", 250.0),
    ("META", 500.0),
    ("NFLX", 600.0),
];

struct Symbol {
    name: String,
    /// The natural logarithm of the price.
    walk: Walk,
    /// The last price published (the start price before the first trade).
    last: f64,
}

/// One trade.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trade {
    pub symbol: String,
    pub price: f64,
    pub change: f64,
    pub volume: u32,
}

pub struct Trades {
    rng: Rng,
    symbols: Vec<Symbol>,
    /// Rounds so far: symbol `i` trades on rounds divisible by `i + 1`.
    round: u64,
}

impl Trades {
    pub fn new(symbols: &[String]) -> Trades {
        Trades::with_rng(symbols, Rng::new())
    }

    fn with_rng(symbols: &[String], mut rng: Rng) -> Trades {
        let symbols = symbols
            .iter()
            .map(|name| {
                let start = KNOWN
                    .iter()
                    .find(|(known, _)| known.eq_ignore_ascii_case(name))
                    .map_or_else(|| 20.0 + rng.f64() * 280.0, |&(_, price)| price);
                let start = round(start, 2);
                // Half to twice the start price at the extremes.
                let mean = start.ln();
                let walk = Walk::new(mean, 0.002, 0.002, mean - 0.69, mean + 0.69);
                Symbol {
                    name: name.clone(),
                    walk,
                    last: start,
                }
            })
            .collect();
        Trades {
            rng,
            symbols,
            round: 0,
        }
    }

    /// The trades of this round.
    fn trades(&mut self) -> Vec<Trade> {
        let round_no = self.round;
        self.round += 1;
        let rng = &mut self.rng;
        self.symbols
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| round_no.is_multiple_of(*i as u64 + 1))
            .map(|(_, symbol)| {
                let price = round(symbol.walk.step(rng).exp(), 2).max(0.01);
                // `+ 0.0` turns a -0.0 into 0.0.
                let change = round(price - symbol.last, 2) + 0.0;
                symbol.last = price;
                Trade {
                    symbol: symbol.name.clone(),
                    price,
                    change,
                    volume: rng.u32(1..=50) * 100,
                }
            })
            .collect()
    }
}

impl Producer for Trades {
    fn name(&self) -> &'static str {
        "trades"
    }

    fn topics(&self) -> Vec<String> {
        self.symbols
            .iter()
            .map(|s| format!("trades/{}", s.name))
            .collect()
    }

    fn period(&mut self) -> Duration {
        PERIOD
    }

    fn produce(&mut self, _hub: &Hub) -> Vec<Draft> {
        self.trades()
            .into_iter()
            .map(|t| Draft::new(format!("trades/{}", t.symbol), "trade", &t))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn symbols(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn symbol_i_trades_every_i_plus_one_rounds() {
        let mut trades = Trades::with_rng(&symbols(&["AAPL", "GOOGL", "XYZ"]), Rng::with_seed(1));
        let mut counts = std::collections::HashMap::new();
        for _ in 0..12 {
            for t in trades.trades() {
                *counts.entry(t.symbol).or_insert(0) += 1;
            }
        }
        assert_eq!(counts["AAPL"], 12);
        assert_eq!(counts["GOOGL"], 6);
        assert_eq!(counts["XYZ"], 4);
    }

    #[test]
    fn prices_stay_plausible_and_changes_add_up() {
        let mut trades = Trades::with_rng(&symbols(&["AAPL"]), Rng::with_seed(2));
        let mut last = 190.0;
        for _ in 0..100_000 {
            let t = trades.trades().pop().unwrap();
            assert!((95.0..=380.0).contains(&t.price), "{t:?}");
            assert_eq!(round(t.price, 2), t.price);
            assert_eq!(t.change, round(t.price - last, 2), "{t:?}");
            assert!(t.volume >= 100 && t.volume.is_multiple_of(100));
            last = t.price;
        }
    }
}
