//! The results table: a run's `summary.json` (one seed, or the mean ± std of `--seeds N`) as a
//! Markdown table, CSV and JSON, all made from the same rows so that they always agree. With
//! several seeds each row's difference to the baseline stage has Welch's 95% confidence interval
//! and two-sided p-value (unequal variances, as seeds of different methods have). Lifelong stages
//! add a table of their final average accuracy and forgetting.

use serde::{Deserialize, Serialize};

use super::lifelong::scores::{LifelongSpread, LifelongSummary};
use super::summary::{AdapterSummary, Summary};

/// One trained model.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ResultRow {
    /// The stage (the method, in `configs/results.toml`).
    pub stage: String,
    /// The model trained.
    pub model: String,
    /// Final test accuracy, mean over the seeds.
    pub mean: f64,
    /// Sample standard deviation over the seeds (0 with one).
    pub std: f64,
    /// Each seed's final test accuracy.
    pub per_seed: Vec<f64>,
    /// Mean minus the baseline stage's mean, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vs_baseline: Option<f64>,
    /// Welch's 95% confidence interval of that difference (two seeds or more on both sides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vs_baseline_ci95: Option<[f64; 2]>,
    /// Welch's two-sided p-value for that difference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vs_baseline_p: Option<f64>,
    /// Whether the difference is significant at the 5% level (its interval excludes 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub significant: Option<bool>,
    /// Epochs.
    pub epochs: usize,
    /// Wall time of the stage, mean over the seeds.
    pub wall_seconds: f64,
    /// Training samples per second, mean over the seeds.
    pub samples_per_second: f64,
}

/// A results table.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    /// Where it ran.
    pub adapter: AdapterSummary,
    /// The data.
    pub data: String,
    /// The stage the others are compared with.
    pub baseline: Option<String>,
    /// One row per trained model, in stage order.
    pub rows: Vec<ResultRow>,
    /// How our ordering of the methods agrees with the published one ([`PUBLISHED`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<Agreement>,
    /// The lifelong stages' final figures, by stage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lifelong: Vec<(String, LifelongSummary)>,
}

/// Spearman's rank correlation between our methods' means and the published gains, over the
/// methods both have.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Agreement {
    /// Spearman's ρ (ties take their mean rank).
    pub spearman: f64,
    /// The methods compared, in our order (best first).
    pub methods: Vec<String>,
}

/// The published CIFAR-100 results the table is compared with: RepDistiller's Table 1 (CRD,
/// Tian et al. 2020) and mdistiller's DKD table (Zhao et al. 2022), top-1 accuracy (%) on the six
/// same-architecture teacher→student pairs both share: resnet56→resnet20, resnet110→resnet32,
/// resnet32x4→resnet8x4, wrn-40-2→wrn-16-2, wrn-40-2→wrn-40-1, vgg13→vgg8. NaN where the
/// method failed (FSP on wrn-40-1: 0.00). The first row is the student trained alone.
pub const PUBLISHED: &[(&str, [f64; 6])] = &[
    ("student", [69.06, 71.14, 72.50, 73.26, 71.98, 70.36]),
    ("kd", [70.66, 73.08, 73.33, 74.92, 73.54, 72.98]),
    ("fitnet", [69.21, 71.06, 73.50, 73.58, 72.24, 71.02]),
    ("at", [70.55, 72.31, 73.44, 74.08, 72.77, 71.43]),
    ("sp", [69.67, 72.69, 72.94, 73.83, 72.43, 72.68]),
    ("cc", [69.63, 71.48, 72.97, 73.56, 72.21, 70.71]),
    ("vid", [70.38, 72.61, 73.09, 74.11, 73.30, 71.23]),
    ("rkd", [69.61, 71.82, 71.90, 73.35, 72.22, 71.48]),
    ("pkt", [70.34, 72.61, 73.64, 74.54, 73.45, 72.88]),
    ("ab", [69.47, 70.98, 73.17, 72.50, 72.38, 70.94]),
    ("ft", [69.84, 72.37, 72.86, 73.25, 71.59, 70.58]),
    ("fsp", [69.95, 71.89, 72.62, 72.91, f64::NAN, 70.23]),
    ("nst", [69.60, 71.96, 73.30, 73.68, 72.24, 71.53]),
    ("crd", [71.16, 73.48, 75.51, 75.48, 74.14, 73.94]),
    ("dkd", [71.97, 74.11, 76.32, 76.23, 74.81, 74.68]),
];

/// A published method's mean gain over the student (points), over the pairs where it ran.
pub fn published_gain(method: &str) -> Option<f64> {
    let (_, student) = PUBLISHED[0];
    let (_, row) = PUBLISHED[1..].iter().find(|(m, _)| *m == method)?;
    let gains: Vec<f64> = row
        .iter()
        .zip(student)
        .filter(|(v, _)| v.is_finite())
        .map(|(v, s)| v - s)
        .collect();
    Some(gains.iter().sum::<f64>() / gains.len() as f64)
}

/// Ranks from 1 (smallest), ties sharing their mean rank.
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        let mean = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            r[k] = mean;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rank correlation of two equally long samples (three or more; `None` when either
/// is constant).
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() != b.len() || a.len() < 3 {
        return None;
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    (va > 0.0 && vb > 0.0).then(|| cov / (va * vb).sqrt())
}

/// Our ordering against [`PUBLISHED`]: the rows whose stage is a published method's name (one
/// row per method, the first), three or more of them.
fn agreement(rows: &[ResultRow]) -> Option<Agreement> {
    let mut ours: Vec<(&str, f64, f64)> = Vec::new();
    for row in rows {
        let method = row.stage.to_ascii_lowercase();
        if let Some(gain) = published_gain(&method)
            && !ours.iter().any(|(m, _, _)| *m == row.stage)
        {
            ours.push((row.stage.as_str(), row.mean, gain));
        }
    }
    let (mine, theirs): (Vec<f64>, Vec<f64>) = ours.iter().map(|&(_, a, b)| (a, b)).unzip();
    let rho = spearman(&mine, &theirs)?;
    ours.sort_by(|a, b| b.1.total_cmp(&a.1));
    Some(Agreement {
        spearman: rho,
        methods: ours.iter().map(|(m, _, _)| m.to_string()).collect(),
    })
}

/// The rows of a summary, one per model: the last stage that trained it (a model that stages
/// train in turn, as AB's and FSP's initialisation and then their training, is a result only
/// after the last); `baseline` names the stage to compare with (its first model).
pub fn results(summary: &Summary, baseline: Option<&str>) -> Results {
    let mut rows: Vec<ResultRow> = Vec::new();
    for (i, stage) in summary.stages.iter().enumerate() {
        let trained_later = |model: &str| {
            summary.stages[i + 1..]
                .iter()
                .any(|later| later.models.iter().any(|m| m.model == model))
        };
        for m in stage.models.iter().filter(|m| !trained_later(&m.model)) {
            let per_seed = m
                .test_accuracy_per_seed
                .clone()
                .unwrap_or_else(|| vec![m.test_accuracy]);
            rows.push(ResultRow {
                stage: stage.name.clone(),
                model: m.model.clone(),
                mean: m.test_accuracy_mean.unwrap_or(m.test_accuracy),
                std: m.test_accuracy_std.unwrap_or(0.0),
                per_seed,
                vs_baseline: None,
                vs_baseline_ci95: None,
                vs_baseline_p: None,
                significant: None,
                epochs: stage.epochs,
                wall_seconds: stage.wall_seconds,
                samples_per_second: stage.samples_per_second,
            });
        }
    }
    let base_row = baseline.and_then(|b| rows.iter().find(|r| r.stage == b).cloned());
    let base = base_row.as_ref().map(|r| r.mean);
    if let Some(b) = &base_row {
        for r in &mut rows {
            r.vs_baseline = Some(r.mean - b.mean);
            if r.stage != b.stage
                && let Some(d) = welch(&r.per_seed, &b.per_seed)
            {
                r.vs_baseline_ci95 = Some(d.ci95);
                r.vs_baseline_p = Some(d.p_value);
                r.significant = Some(d.ci95[0] > 0.0 || d.ci95[1] < 0.0);
            }
        }
    }
    Results {
        adapter: summary.adapter.clone(),
        data: summary.data.clone(),
        baseline: base.and(baseline.map(str::to_string)),
        published: agreement(&rows),
        rows,
        lifelong: summary
            .stages
            .iter()
            .filter_map(|s| s.lifelong.clone().map(|l| (s.name.clone(), l)))
            .collect(),
    }
}

/// The lifelong stages in Markdown: after the last task, the average accuracy over the tasks
/// and the average forgetting, class- and task-incremental, in percent (± the std over seeds).
fn lifelong_markdown(stages: &[(String, LifelongSummary)]) -> String {
    let mut out = String::from(
        "\n| lifelong stage | memory | class-IL accuracy, % | class-IL forgetting | task-IL accuracy, % | task-IL forgetting |\n|---|---|---|---|---|---|\n",
    );
    for (name, l) in stages {
        let last = |v: &[f64]| 100.0 * v.last().copied().unwrap_or(0.0);
        let sd = |pick: fn(&LifelongSpread) -> f64| match &l.spread {
            Some(s) => format!(" ± {:.2}", 100.0 * pick(s)),
            None => String::new(),
        };
        out.push_str(&format!(
            "| {name} | {} | {:.2}{} | {:.2}{} | {:.2}{} | {:.2}{} |\n",
            l.memory,
            last(&l.average_class_il),
            sd(|s| s.average_class_il),
            100.0 * l.forgetting_class_il,
            sd(|s| s.forgetting_class_il),
            last(&l.average_task_il),
            sd(|s| s.average_task_il),
            100.0 * l.forgetting_task_il,
            sd(|s| s.forgetting_task_il),
        ));
    }
    out
}

/// The difference of two samples' means with Welch's 95% confidence interval and two-sided
/// p-value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Difference {
    /// `mean(a) − mean(b)`.
    pub mean: f64,
    /// The 95% confidence interval of the difference.
    pub ci95: [f64; 2],
    /// Two-sided p-value of "no difference".
    pub p_value: f64,
}

fn mean_var(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var)
}

/// Welch's t-test of `a` against `b` (two values or more each; `None` otherwise).
pub fn welch(a: &[f64], b: &[f64]) -> Option<Difference> {
    use statrs::distribution::{ContinuousCDF, StudentsT};
    if a.len() < 2 || b.len() < 2 {
        return None;
    }
    let ((ma, va), (mb, vb)) = (mean_var(a), mean_var(b));
    let (sa, sb) = (va / a.len() as f64, vb / b.len() as f64);
    let mean = ma - mb;
    let se = (sa + sb).sqrt();
    if se == 0.0 {
        // Identical seeds on both sides: the difference is exact.
        let p_value = if mean == 0.0 { 1.0 } else { 0.0 };
        return Some(Difference {
            mean,
            ci95: [mean, mean],
            p_value,
        });
    }
    // Welch–Satterthwaite degrees of freedom.
    let df = (sa + sb).powi(2)
        / (sa.powi(2) / (a.len() as f64 - 1.0) + sb.powi(2) / (b.len() as f64 - 1.0));
    let t = StudentsT::new(0.0, 1.0, df).ok()?;
    let half = t.inverse_cdf(0.975) * se;
    Some(Difference {
        mean,
        ci95: [mean - half, mean + half],
        p_value: 2.0 * (1.0 - t.cdf(mean.abs() / se)),
    })
}

/// The table in Markdown: accuracies in percent, mean ± std over the seeds; with several seeds,
/// the 95% interval of each difference to the baseline and whether it excludes 0 (`*`).
pub fn markdown(r: &Results) -> String {
    let seeds = r.rows.first().map_or(0, |row| row.per_seed.len());
    let versus = r.baseline.as_deref().unwrap_or("baseline");
    let stats = r.rows.iter().any(|row| row.vs_baseline_ci95.is_some());
    let mut out = format!(
        "| stage | model | test accuracy, % ({seeds} seed{}) | vs {versus} |{} epochs | wall s | samples/s |\n|---|---|---|---|{}---|---|---|\n",
        if seeds == 1 { "" } else { "s" },
        if stats { " 95% CI | p |" } else { "" },
        if stats { "---|---|" } else { "" },
    );
    for row in &r.rows {
        let vs = match row.vs_baseline {
            Some(d) if row.stage != versus => format!(
                "{:+.2}{}",
                100.0 * d,
                if row.significant == Some(true) {
                    " *"
                } else {
                    ""
                }
            ),
            _ => "–".to_string(),
        };
        let interval = match (row.vs_baseline_ci95, row.vs_baseline_p) {
            (Some([lo, hi]), Some(p)) => {
                format!(" [{:+.2}, {:+.2}] | {p:.3} |", 100.0 * lo, 100.0 * hi)
            }
            _ if stats => " – | – |".to_string(),
            _ => String::new(),
        };
        out.push_str(&format!(
            "| {} | {} | {:.2} ± {:.2} | {vs} |{interval} {} | {:.1} | {:.0} |\n",
            row.stage,
            row.model,
            100.0 * row.mean,
            100.0 * row.std,
            row.epochs,
            row.wall_seconds,
            row.samples_per_second
        ));
    }
    if stats {
        out.push_str(&format!(
            "\n`*`: the 95% interval of the difference to {versus} (Welch's t, unequal variances) excludes 0.\n"
        ));
    }
    if let Some(a) = &r.published {
        out.push_str(&format!(
            "\nSpearman's ρ between this ordering and the published one (mean CIFAR-100 gain over the student, RepDistiller and mdistiller, six teacher–student pairs) over {} methods ({}): {:.2}.\n",
            a.methods.len(),
            a.methods.join(", "),
            a.spearman
        ));
    }
    if !r.lifelong.is_empty() {
        out.push_str(&lifelong_markdown(&r.lifelong));
    }
    out.push_str(&format!(
        "\nAdapter: {} ({}, {}). Data: {}.\n",
        r.adapter.name, r.adapter.backend, r.adapter.driver, r.data
    ));
    out
}

/// The table as CSV (one header line, one line per row; accuracies as fractions).
pub fn csv(r: &Results) -> String {
    let mut out = String::from(
        "stage,model,mean,std,seeds,vs_baseline,ci95_low,ci95_high,p_value,significant,epochs,wall_seconds,samples_per_second\n",
    );
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v}"));
    let quote = |s: &str| {
        if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    for row in &r.rows {
        let [lo, hi] = row
            .vs_baseline_ci95
            .map_or([None, None], |[a, b]| [Some(a), Some(b)]);
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            quote(&row.stage),
            quote(&row.model),
            row.mean,
            row.std,
            row.per_seed.len(),
            opt(row.vs_baseline),
            opt(lo),
            opt(hi),
            opt(row.vs_baseline_p),
            row.significant.map_or(String::new(), |s| s.to_string()),
            row.epochs,
            row.wall_seconds,
            row.samples_per_second
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn welch_matches_a_textbook_case() {
        // Two samples of five: means 20.0 and 22.0, variances 2.5 and 2.5: t = −2, df = 8,
        // t(0.975, 8) = 2.306004, p = 0.080516.
        let a = [18.0, 19.0, 20.0, 21.0, 22.0];
        let b = [20.0, 21.0, 22.0, 23.0, 24.0];
        let d = welch(&a, &b).unwrap();
        assert!((d.mean + 2.0).abs() < 1e-12);
        let half = 2.306004 * 1.0;
        assert!((d.ci95[0] - (-2.0 - half)).abs() < 1e-5, "{d:?}");
        assert!((d.ci95[1] - (-2.0 + half)).abs() < 1e-5, "{d:?}");
        assert!((d.p_value - 0.080516).abs() < 1e-5, "{d:?}");
        // Unequal variances and sizes: df from Welch–Satterthwaite.
        let c = [1.0, 2.0, 3.0];
        let e = [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0];
        let d = welch(&c, &e).unwrap();
        assert!(
            d.ci95[0] < d.mean && d.mean < d.ci95[1] && d.p_value > 0.3,
            "{d:?}"
        );
        assert!(welch(&[1.0], &e).is_none());
        let same = welch(&[0.5, 0.5], &[0.5, 0.5]).unwrap();
        assert_eq!((same.ci95, same.p_value), ([0.0, 0.0], 1.0));
    }

    #[test]
    fn spearman_ranks_with_ties_and_the_published_gains() {
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]), Some(1.0));
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), Some(-1.0));
        // Ties share their mean rank: ranks (1.5, 1.5, 3) against (1, 2, 3).
        let rho = spearman(&[5.0, 5.0, 9.0], &[1.0, 2.0, 3.0]).unwrap();
        assert!((rho - 0.866_025_403_784_438_6).abs() < 1e-12, "{rho}");
        assert_eq!(spearman(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), None);
        // DKD and CRD lead the published gains; FSP's failed pair is left out, not counted as 0.
        let gain = |m| published_gain(m).unwrap();
        assert!(gain("dkd") > gain("crd") && gain("crd") > gain("kd") && gain("kd") > gain("rkd"));
        assert!((gain("kd") - 10.21 / 6.0).abs() < 1e-9, "{}", gain("kd"));
        assert!(gain("fsp") > 0.0 && published_gain("byot").is_none());
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let row = ResultRow {
            stage: "kd, t=4".into(),
            model: "m".into(),
            mean: 0.5,
            std: 0.0,
            per_seed: vec![0.5],
            vs_baseline: None,
            vs_baseline_ci95: None,
            vs_baseline_p: None,
            significant: None,
            epochs: 1,
            wall_seconds: 1.0,
            samples_per_second: 2.0,
        };
        let r = Results {
            adapter: AdapterSummary {
                name: "a".into(),
                backend: "vulkan".into(),
                driver: "d".into(),
            },
            data: "x".into(),
            baseline: None,
            published: None,
            rows: vec![row],
            lifelong: Vec::new(),
        };
        let text = csv(&r);
        assert_eq!(text.lines().count(), 2);
        assert!(
            text.lines()
                .nth(1)
                .unwrap()
                .starts_with("\"kd, t=4\",m,0.5,0,1,,,,,,1,1,2")
        );
    }
}
