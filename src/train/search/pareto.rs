//! The search's records and their Pareto front: the candidates no other beats on both proxy
//! accuracy and latency, drawn (`pareto.svg`) beside the latency budget.

use std::path::Path;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::Result;
use crate::error::input_error;

use super::space::Candidate;

/// One evaluated candidate.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Record {
    /// Its place in the search (0-based).
    pub index: usize,
    /// Its key.
    pub key: String,
    /// The architecture.
    pub candidate: Candidate,
    /// Trainable parameters.
    pub parameters: usize,
    /// The median time of an inference batch on the adapter (upload, forward, readback), ms.
    pub latency_ms: f64,
    /// Whether it is within the latency budget (only those are trained).
    pub feasible: bool,
    /// Validation accuracy after the KD proxy training.
    pub proxy_accuracy: Option<f64>,
    /// Seconds its proxy training took.
    pub proxy_seconds: f64,
}

impl Record {
    /// What evolution ranks by: the proxy accuracy within the budget; below every feasible
    /// candidate, the further over the budget the worse.
    pub fn fitness(&self, budget_ms: f64) -> f64 {
        match self.proxy_accuracy {
            Some(a) if self.feasible => a,
            _ => -self.latency_ms / budget_ms,
        }
    }
}

/// The indices of the records on the Pareto front of the trained candidates (higher accuracy,
/// lower latency), fastest first; one record per key.
pub fn front(records: &[Record]) -> Vec<usize> {
    let mut trained: Vec<usize> = records
        .iter()
        .enumerate()
        .filter(|(i, r)| {
            r.proxy_accuracy.is_some() && !records[..*i].iter().any(|o| o.key == r.key)
        })
        .map(|(i, _)| i)
        .collect();
    let acc = |i: usize| records[i].proxy_accuracy.unwrap_or(0.0);
    trained.sort_by(|&a, &b| {
        records[a]
            .latency_ms
            .total_cmp(&records[b].latency_ms)
            .then(acc(b).total_cmp(&acc(a)))
    });
    let mut out = Vec::new();
    let mut best = f64::NEG_INFINITY;
    for i in trained {
        if acc(i) > best {
            best = acc(i);
            out.push(i);
        }
    }
    out
}

/// Draws `pareto.svg`: every trained candidate by latency and proxy accuracy, the front joined,
/// the budget as a vertical line and the winner ringed.
pub fn write_svg(
    path: &Path,
    records: &[Record],
    budget_ms: f64,
    winner: Option<usize>,
) -> Result<()> {
    let tmp = path.with_extension("svg.tmp");
    draw(&tmp, records, budget_ms, winner)
        .map_err(|e| input_error(path.display().to_string(), format!("cannot draw ({e})")))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| input_error(path.display().to_string(), format!("cannot write ({e})")))
}

fn draw(
    path: &Path,
    records: &[Record],
    budget_ms: f64,
    winner: Option<usize>,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let trained: Vec<&Record> = records
        .iter()
        .filter(|r| r.proxy_accuracy.is_some())
        .collect();
    let max_latency = records
        .iter()
        .map(|r| r.latency_ms)
        .fold(budget_ms, f64::max)
        * 1.1;
    // Latencies span orders of magnitude (an MLP against a MobileNet): a log axis keeps the
    // fast candidates apart.
    let min_latency = records
        .iter()
        .map(|r| r.latency_ms)
        .filter(|&l| l > 0.0)
        .fold(budget_ms, f64::min)
        * 0.8;
    let accs = trained.iter().filter_map(|r| r.proxy_accuracy);
    let low = accs.clone().fold(1.0, f64::min).min(0.9) - 0.02;
    let over = records.len() - trained.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{} candidates: proxy accuracy against latency ({over} over the budget, untrained)",
                records.len()
            ),
            ("sans-serif", 18),
        )
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d((min_latency..max_latency).log_scale(), low.max(0.0)..1.0)?;
    chart
        .configure_mesh()
        .x_desc("latency per inference batch, ms (this adapter; log scale)")
        .y_desc("validation accuracy after the KD proxy")
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            vec![(budget_ms, low.max(0.0)), (budget_ms, 1.0)],
            RED.stroke_width(2),
        ))?
        .label(format!("budget {budget_ms} ms"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED.stroke_width(2)));
    let point = |r: &Record| (r.latency_ms, r.proxy_accuracy.unwrap_or(0.0));
    chart
        .draw_series(
            trained
                .iter()
                .map(|r| Circle::new(point(r), 4, BLUE.mix(0.5).filled())),
        )?
        .label("candidate")
        .legend(|(x, y)| Circle::new((x + 8, y), 4, BLUE.mix(0.5).filled()));
    let on_front: Vec<&Record> = front(records).into_iter().map(|i| &records[i]).collect();
    chart
        .draw_series(LineSeries::new(
            on_front.iter().map(|r| point(r)),
            BLACK.stroke_width(2),
        ))?
        .label("Pareto front")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK.stroke_width(2)));
    chart.draw_series(on_front.iter().map(|r| {
        Text::new(
            r.key.clone(),
            (r.latency_ms, r.proxy_accuracy.unwrap_or(0.0)),
            ("sans-serif", 12),
        )
    }))?;
    if let Some(w) = winner.and_then(|i| records.get(i)) {
        chart
            .draw_series(std::iter::once(Circle::new(
                point(w),
                9,
                GREEN.stroke_width(3),
            )))?
            .label(format!("winner: {}", w.key))
            .legend(|(x, y)| Circle::new((x + 8, y), 6, GREEN.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(index: usize, key: &str, latency_ms: f64, acc: Option<f64>) -> Record {
        Record {
            index,
            key: key.into(),
            candidate: Candidate::Mlp {
                hidden: vec![index + 1],
            },
            parameters: 1,
            latency_ms,
            feasible: acc.is_some(),
            proxy_accuracy: acc,
            proxy_seconds: 0.0,
        }
    }

    #[test]
    fn the_front_keeps_what_nothing_dominates() {
        let records = vec![
            record(0, "a", 1.0, Some(0.80)),
            record(1, "b", 2.0, Some(0.85)),
            record(2, "c", 3.0, Some(0.84)), // slower and worse than b
            record(3, "d", 0.5, Some(0.70)),
            record(4, "e", 9.0, None),       // over the budget
            record(5, "b", 2.0, Some(0.85)), // b again
            record(6, "f", 4.0, Some(0.90)),
        ];
        assert_eq!(front(&records), vec![3, 0, 1, 6]);
        assert_eq!(records[4].fitness(3.0), -3.0);
        assert_eq!(records[1].fitness(3.0), 0.85);
    }
}
