//! Plots of a benchmark (plotters, SVG and PNG): p50 and p99 against rate per
//! configuration, and the full latency distribution per rate (median over
//! runs of each quantile, x axis in "nines" like HdrHistogram's plots).

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::app::Config;
use crate::bench::BenchResults;
use crate::report::median;

const SIZE: (u32, u32) = (1000, 650);
/// The largest "nines" value plotted: quantile 1.0 is drawn at 99.9999%.
const MAX_NINES: f64 = 6.0;

#[derive(Debug, thiserror::Error)]
#[error("cannot draw {path}: {reason}")]
pub struct PlotError {
    path: PathBuf,
    reason: String,
}

fn color(config: Config) -> RGBColor {
    match config {
        Config::Bare => RGBColor(0x33, 0x66, 0xcc),
        Config::Otel => RGBColor(0xdc, 0x39, 0x12),
        Config::Ebpf => RGBColor(0x10, 0x96, 0x18),
    }
}

/// One line of a chart; p99 lines are thin with triangles.
struct Line {
    label: String,
    color: RGBColor,
    is_p99: bool,
    points: Vec<(f64, f64)>,
}

/// One chart: title, x axis and lines.
struct Plot {
    title: String,
    x_desc: &'static str,
    x_range: (f64, f64),
    x_label: fn(&f64) -> String,
    series: Vec<Line>,
}

/// Draws `plot` with a log-scaled latency axis onto `area`.
fn draw<DB: DrawingBackend>(area: DrawingArea<DB, Shift>, plot: &Plot) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    area.fill(&WHITE).map_err(err)?;
    let ys = || {
        plot.series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
    };
    let y_max = ys().fold(1.0f64, f64::max) * 1.5;
    let y_min = ys().filter(|&y| y > 0.0).fold(y_max / 10.0, f64::min) / 1.5;
    let mut chart = ChartBuilder::on(&area)
        .caption(&plot.title, ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(
            plot.x_range.0..plot.x_range.1,
            (y_min.max(0.01)..y_max).log_scale(),
        )
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(plot.x_desc)
        .y_desc("latency (ms)")
        .x_label_formatter(&plot.x_label)
        .y_label_formatter(&|y| format!("{y}"))
        .draw()
        .map_err(err)?;
    for Line {
        label,
        color,
        is_p99,
        points,
    } in &plot.series
    {
        let style = color.stroke_width(if *is_p99 { 1 } else { 2 });
        chart
            .draw_series(LineSeries::new(points.iter().copied(), style))
            .map_err(err)?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        if *is_p99 {
            chart
                .draw_series(
                    points
                        .iter()
                        .map(|&p| TriangleMarker::new(p, 5, color.filled())),
                )
                .map_err(err)?;
        } else {
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .map_err(err)?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    area.present().map_err(err)
}

/// Writes `<stem>.svg` and `<stem>.png`.
fn render(dir: &Path, stem: &str, plot: &Plot) -> Result<Vec<PathBuf>, PlotError> {
    let svg = dir.join(format!("{stem}.svg"));
    let png = dir.join(format!("{stem}.png"));
    let failed = |path: &Path| {
        let path = path.to_owned();
        move |reason| PlotError { path, reason }
    };
    draw(SVGBackend::new(&svg, SIZE).into_drawing_area(), plot).map_err(failed(&svg))?;
    draw(BitMapBackend::new(&png, SIZE).into_drawing_area(), plot).map_err(failed(&png))?;
    Ok(vec![svg, png])
}

/// `-log10(1 - q)`: 0 at the median's left, 2 at p99, 3 at p99.9.
fn nines(quantile: f64) -> f64 {
    (-(1.0 - quantile).log10()).min(MAX_NINES)
}

fn nines_label(x: &f64) -> String {
    let percent = 100.0 * (1.0 - 10f64.powf(-x));
    let decimals = (x.round() as i32 - 2).clamp(0, 6) as usize;
    format!("{percent:.decimals$}%")
}

fn rate_label(x: &f64) -> String {
    format!("{x:.0}")
}

/// Draws every plot of `results` into `dir`; returns the files written.
pub fn write_plots(dir: &Path, results: &BenchResults) -> Result<Vec<PathBuf>, PlotError> {
    let mut files = Vec::new();
    let by_rate = |config: Config, f: fn(&crate::bench::Point) -> f64| -> Vec<(f64, f64)> {
        results
            .rates
            .iter()
            .filter_map(|&rate| {
                let values: Vec<f64> = results
                    .points
                    .iter()
                    .filter(|p| p.config == config && p.rate == rate)
                    .map(f)
                    .collect();
                Some((rate, median(&values)?))
            })
            .collect()
    };
    let mut series = Vec::new();
    for &config in &results.configs {
        series.push(Line {
            label: format!("{config} p50"),
            color: color(config),
            is_p99: false,
            points: by_rate(config, |p| p.load.latency.p50_ms),
        });
        series.push(Line {
            label: format!("{config} p99"),
            color: color(config),
            is_p99: true,
            points: by_rate(config, |p| p.load.latency.p99_ms),
        });
    }
    let max_rate = results.rates.iter().copied().fold(1.0, f64::max);
    files.extend(render(
        dir,
        "latency_vs_rate",
        &Plot {
            title: "Latency against rate (median of runs)".into(),
            x_desc: "rate (requests/s)",
            x_range: (0.0, max_rate * 1.1),
            x_label: rate_label,
            series,
        },
    )?);

    for &rate in &results.rates {
        let series = results
            .configs
            .iter()
            .map(|&config| {
                let runs: Vec<&Vec<(f64, f64)>> = results
                    .points
                    .iter()
                    .filter(|p| p.config == config && p.rate == rate)
                    .map(|p| &p.load.latency.distribution)
                    .collect();
                let quantiles = runs
                    .first()
                    .map(|d| d.iter().map(|q| q.0).collect::<Vec<_>>());
                let points = quantiles
                    .unwrap_or_default()
                    .into_iter()
                    .enumerate()
                    .filter_map(|(i, q)| {
                        let at: Vec<f64> =
                            runs.iter().filter_map(|d| d.get(i).map(|v| v.1)).collect();
                        Some((nines(q), median(&at)?))
                    })
                    .collect();
                Line {
                    label: config.to_string(),
                    color: color(config),
                    is_p99: false,
                    points,
                }
            })
            .collect();
        files.extend(render(
            dir,
            &format!("distribution_{rate:.0}rps"),
            &Plot {
                title: format!("Latency distribution at {rate:.0} requests/s (median of runs)"),
                x_desc: "percentile",
                x_range: (0.0, MAX_NINES),
                x_label: nines_label,
                series,
            },
        )?);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nines_axis() {
        assert_eq!(nines(0.0), 0.0);
        assert!((nines(0.99) - 2.0).abs() < 1e-9);
        assert!((nines(0.999) - 3.0).abs() < 1e-9);
        assert_eq!(nines(1.0), MAX_NINES);
        assert_eq!(nines_label(&2.0), "99%");
        assert_eq!(nines_label(&3.0), "99.9%");
        assert_eq!(nines_label(&1.0), "90%");
    }
}
