//! PNG line charts of bench results (plotters, text drawn with Debian's
//! DejaVu Sans through ab_glyph: no fontconfig needed).

use std::path::Path;

use plotters::prelude::*;
use plotters::style::FontStyle;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let bytes =
            std::fs::read(FONT).unwrap_or_else(|e| panic!("{FONT} (apt install fonts-dejavu-core): {e}"));
        plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into_boxed_slice()))
            .unwrap_or_else(|_| panic!("{FONT} is not a usable font"));
    });
}

/// Draws `charts` side by side into one PNG at `path`.
pub fn save(path: &Path, charts: &[Chart]) {
    register_font();
    let width = 720 * charts.len() as u32;
    let root = BitMapBackend::new(path, (width, 480)).into_drawing_area();
    root.fill(&WHITE).expect("plot");
    let panels = root.split_evenly((1, charts.len()));
    for (chart, area) in charts.iter().zip(panels) {
        draw(chart, &area);
    }
    root.present().unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

fn draw(spec: &Chart, area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>) {
    let points = spec.series.iter().flat_map(|s| s.points.iter());
    let (x_max, y_max) = points.fold((0f64, 0f64), |(x, y), p| (x.max(p.0), y.max(p.1)));
    let mut chart = ChartBuilder::on(area)
        .caption(&spec.title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..(x_max * 1.05).max(1.0), 0f64..(y_max * 1.15).max(1e-9))
        .expect("chart");
    chart
        .configure_mesh()
        .x_desc(&spec.x_label)
        .y_desc(&spec.y_label)
        .label_style(("sans-serif", 14))
        .draw()
        .expect("mesh");
    for (i, series) in spec.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(series.points.clone(), color.stroke_width(2)))
            .expect("series")
            .label(series.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(series.points.iter().map(|&p| Circle::new(p, 4, color.filled()))).expect("points");
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .expect("legend");
}
