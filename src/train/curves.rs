//! `curves.svg`: training loss and test accuracy per epoch for every stage's model, drawn from
//! `metrics.jsonl` (so a resumed run's curves include the epochs before the interruption).

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;

use crate::Result;
use crate::error::input_error;

type Series = BTreeMap<String, Vec<(f64, f64, f64)>>;

fn read(metrics: &Path) -> Series {
    let mut series: Series = BTreeMap::new();
    let text = std::fs::read_to_string(metrics).unwrap_or_default();
    for v in text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    {
        let (Some(stage), Some(model), Some(epoch)) = (
            v["stage"].as_str(),
            v["model"].as_str(),
            v["epoch"].as_f64(),
        ) else {
            continue;
        };
        // Absent in the epochs a stage's `test_every` skips.
        let acc = v["test_accuracy"].as_f64().unwrap_or(f64::NAN);
        // The epoch's mean of sampled losses where the run wrote it, else its last step's.
        let loss = v["train_loss_mean"]
            .as_f64()
            .or_else(|| v["train_loss"].as_f64())
            .unwrap_or(f64::NAN);
        series
            .entry(format!("{stage}: {model}"))
            .or_default()
            .push((epoch, loss, acc));
    }
    series
}

/// Draws `curves.svg` in `out` from `out/metrics.jsonl`.
pub fn write_curves(out: &Path) -> Result<()> {
    let series = read(&out.join("metrics.jsonl"));
    let path = out.join("curves.svg");
    let tmp = out.join("curves.svg.tmp");
    draw(&tmp, &series)
        .map_err(|e| input_error(path.display().to_string(), format!("cannot draw ({e})")))?;
    std::fs::rename(&tmp, &path)
        .map_err(|e| input_error(path.display().to_string(), format!("cannot write ({e})")))
}

fn draw(path: &Path, series: &Series) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(500);
    let epochs = series.values().flatten().map(|p| p.0).fold(1.0, f64::max);
    let max_loss = series
        .values()
        .flatten()
        .map(|p| p.1)
        .filter(|l| l.is_finite())
        .fold(0.1, f64::max);
    type Pick = fn(&(f64, f64, f64)) -> f64;
    let panels: [(
        &DrawingArea<SVGBackend, _>,
        &str,
        f64,
        Pick,
        SeriesLabelPosition,
    ); 2] = [
        (
            &left,
            "training loss (last step of the epoch)",
            max_loss * 1.05,
            |p| p.1,
            SeriesLabelPosition::UpperRight,
        ),
        (
            &right,
            "test accuracy",
            1.0,
            |p| p.2,
            SeriesLabelPosition::LowerRight,
        ),
    ];
    for (area, caption, top, pick, legend) in panels {
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(45)
            .build_cartesian_2d(0.5f64..epochs + 0.5, 0f64..top)?;
        chart.configure_mesh().x_desc("epoch").draw()?;
        for (i, (name, points)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let line: Vec<(f64, f64)> = points
                .iter()
                .map(|p| (p.0, pick(p)))
                .filter(|p| p.1.is_finite())
                .collect();
            // Markers too, so that a one-epoch stage still shows.
            chart.draw_series(line.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
            chart
                .draw_series(LineSeries::new(line, color.stroke_width(2)))?
                .label(name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(legend)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
