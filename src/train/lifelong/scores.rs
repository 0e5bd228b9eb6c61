//! A lifelong stage's scores: after each task t, the test accuracy on every task j ≤ t, in two
//! scenarios. Class-incremental (class-IL): the prediction is the largest logit over every
//! class seen so far, so the model must also tell the tasks apart. Task-incremental (task-IL):
//! the largest over task j's own classes (the task is given). From the matrix a\[t\]\[j\]: the
//! average accuracy after each task, mean over j ≤ t of a\[t\]\[j\]; and the average forgetting
//! after the last task T, mean over j < T of max over t < T of a\[t\]\[j\] minus a\[T\]\[j\]
//! (Chaudhry et al. 2018).

use std::path::Path;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::Result;
use crate::data::Dataset;
use crate::error::input_error;
use crate::io::{HostTensor, TensorMap};

use super::Tasks;

/// The accuracy matrices so far: row t holds the accuracy on tasks 0..=t after task t.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scores {
    /// Class-incremental.
    pub class_il: Vec<Vec<f64>>,
    /// Task-incremental.
    pub task_il: Vec<Vec<f64>>,
}

/// The mean of `v` (0 for none).
pub fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// The index of the largest of `row[range]` (the first on ties).
fn argmax(row: &[f32], range: std::ops::Range<usize>) -> usize {
    range.start + crate::train::run::predicted_class(&row[range])
}

/// Per task 0..=t: (class-IL correct, task-IL correct, samples) on `test`, from its logits.
fn counts(logits: &[f32], test: &Dataset, tasks: &Tasks, t: usize) -> Vec<[usize; 3]> {
    let classes = test.classes;
    let seen = 0..tasks.classes(t).end;
    let mut per_task = vec![[0usize; 3]; t + 1];
    for (row, &label) in logits.chunks(classes).zip(&test.labels) {
        let label = label as usize;
        let j = tasks.task_of(label);
        if j > t {
            continue;
        }
        let c = &mut per_task[j];
        c[0] += usize::from(argmax(row, seen.clone()) == label);
        c[1] += usize::from(argmax(row, tasks.classes(j)) == label);
        c[2] += 1;
    }
    per_task
}

/// The class-IL and task-IL accuracy over the test images of tasks 0..=t (each image counts
/// once): the accuracy a stage logs per epoch.
pub fn seen_accuracy(logits: &[f32], test: &Dataset, tasks: &Tasks, t: usize) -> (f64, f64) {
    let total = counts(logits, test, tasks, t)
        .into_iter()
        .fold([0usize; 3], |a, c| [a[0] + c[0], a[1] + c[1], a[2] + c[2]]);
    let n = total[2].max(1) as f64;
    (total[0] as f64 / n, total[1] as f64 / n)
}

impl Scores {
    /// Appends row `t` from the logits on `test` after task `t`.
    pub fn record(&mut self, logits: &[f32], test: &Dataset, tasks: &Tasks, t: usize) {
        let per_task = counts(logits, test, tasks, t);
        let acc = |k: usize| {
            per_task
                .iter()
                .map(|c| c[k] as f64 / c[2].max(1) as f64)
                .collect::<Vec<f64>>()
        };
        self.class_il.truncate(t);
        self.task_il.truncate(t);
        self.class_il.push(acc(0));
        self.task_il.push(acc(1));
    }

    /// As tensors, for the stage's state: `scores.class_il` and `scores.task_il`, each a
    /// `[rows, tasks]` matrix with zeros beyond the diagonal.
    pub fn to_tensors(&self) -> TensorMap {
        let mut t = TensorMap::new();
        for (key, m) in [
            ("scores.class_il", &self.class_il),
            ("scores.task_il", &self.task_il),
        ] {
            let width = m.last().map_or(0, Vec::len);
            let mut flat = Vec::new();
            for row in m {
                let mut r: Vec<f32> = row.iter().map(|&v| v as f32).collect();
                r.resize(width, 0.0);
                flat.extend(r);
            }
            t.insert(key.into(), HostTensor::f32(&[m.len(), width], flat));
        }
        t
    }

    /// Reads [`Scores::to_tensors`]'s tensors of a stage of `tasks` tasks.
    pub fn from_tensors(what: &str, t: &TensorMap, tasks: usize) -> Result<Scores> {
        let read = |key: &str| -> Result<Vec<Vec<f64>>> {
            let tensor = t
                .get(key)
                .ok_or_else(|| input_error(what, format!("no tensor '{key}'")))?;
            let values = tensor
                .as_f32()
                .ok_or_else(|| input_error(what, format!("'{key}' is not f32")))?;
            let &[rows, width] = tensor.shape.as_slice() else {
                return Err(input_error(what, format!("'{key}' is not a matrix")));
            };
            if rows > tasks || (rows > 0 && width != rows) {
                return Err(input_error(
                    what,
                    format!("'{key}' must be t × t for t ≤ {tasks} tasks, got {rows} × {width}"),
                ));
            }
            Ok((0..rows)
                .map(|r| {
                    values[r * width..r * width + r + 1]
                        .iter()
                        .map(|&v| f64::from(v))
                        .collect()
                })
                .collect())
        };
        let scores = Scores {
            class_il: read("scores.class_il")?,
            task_il: read("scores.task_il")?,
        };
        if scores.class_il.len() != scores.task_il.len() {
            return Err(input_error(what, "the two score matrices differ in rows"));
        }
        Ok(scores)
    }

    /// The stage's summary from the rows so far.
    pub fn summary(&self, tasks: &Tasks, memory: usize) -> LifelongSummary {
        LifelongSummary {
            tasks: tasks.count,
            classes_per_task: tasks.per_task,
            memory,
            average_class_il: self.class_il.iter().map(|r| mean(r)).collect(),
            average_task_il: self.task_il.iter().map(|r| mean(r)).collect(),
            forgetting_class_il: forgetting(&self.class_il),
            forgetting_task_il: forgetting(&self.task_il),
            class_il: self.class_il.clone(),
            task_il: self.task_il.clone(),
            spread: None,
        }
    }
}

/// The average forgetting after the last row: for each earlier task, its best accuracy in the
/// rows before the last minus its accuracy in the last (0 with fewer than two rows).
pub fn forgetting(m: &[Vec<f64>]) -> f64 {
    let Some((last, before)) = m.split_last() else {
        return 0.0;
    };
    let drops: Vec<f64> = (0..before.len())
        .map(|j| {
            let peak = before[j..].iter().map(|r| r[j]).fold(f64::MIN, f64::max);
            peak - last[j]
        })
        .collect();
    mean(&drops)
}

/// A lifelong stage's result in `summary.json` (accuracies as fractions).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LifelongSummary {
    /// Tasks.
    pub tasks: usize,
    /// Classes per task.
    pub classes_per_task: usize,
    /// Exemplars kept for rehearsal.
    pub memory: usize,
    /// Class-IL accuracy: row t, the accuracy on each task j ≤ t after task t.
    pub class_il: Vec<Vec<f64>>,
    /// Task-IL accuracy, likewise.
    pub task_il: Vec<Vec<f64>>,
    /// Per row, the mean class-IL accuracy over the tasks seen.
    pub average_class_il: Vec<f64>,
    /// Per row, the mean task-IL accuracy over the tasks seen.
    pub average_task_il: Vec<f64>,
    /// Average class-IL forgetting after the last task.
    pub forgetting_class_il: f64,
    /// Average task-IL forgetting after the last task.
    pub forgetting_task_il: f64,
    /// With several seeds: the standard deviations of the final figures (matrices and the other
    /// figures are means over the seeds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<LifelongSpread>,
}

/// Sample standard deviations over seeds of a lifelong stage's final figures.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LifelongSpread {
    /// Of the final average class-IL accuracy.
    pub average_class_il: f64,
    /// Of the final average task-IL accuracy.
    pub average_task_il: f64,
    /// Of the class-IL forgetting.
    pub forgetting_class_il: f64,
    /// Of the task-IL forgetting.
    pub forgetting_task_il: f64,
}

impl LifelongSummary {
    /// The summaries of runs that differ only in their seed, combined: matrices, averages and
    /// forgetting are means over the seeds, with the final figures' spread.
    pub fn aggregate(runs: &[&LifelongSummary]) -> LifelongSummary {
        let n = runs.len() as f64;
        let mut out = runs[0].clone();
        let mean_matrix = |pick: fn(&LifelongSummary) -> &Vec<Vec<f64>>| -> Vec<Vec<f64>> {
            let first = pick(runs[0]);
            first
                .iter()
                .enumerate()
                .map(|(t, row)| {
                    (0..row.len())
                        .map(|j| runs.iter().map(|r| pick(r)[t][j]).sum::<f64>() / n)
                        .collect()
                })
                .collect()
        };
        out.class_il = mean_matrix(|r| &r.class_il);
        out.task_il = mean_matrix(|r| &r.task_il);
        out.average_class_il = out.class_il.iter().map(|r| mean(r)).collect();
        out.average_task_il = out.task_il.iter().map(|r| mean(r)).collect();
        let stats = |pick: fn(&LifelongSummary) -> f64| {
            let v: Vec<f64> = runs.iter().map(|r| pick(r)).collect();
            let m = mean(&v);
            let var = if v.len() > 1 {
                v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)
            } else {
                0.0
            };
            (m, var.sqrt())
        };
        let (_, sd_class) = stats(|r| r.average_class_il.last().copied().unwrap_or(0.0));
        let (_, sd_task) = stats(|r| r.average_task_il.last().copied().unwrap_or(0.0));
        let (f_class, sd_f_class) = stats(|r| r.forgetting_class_il);
        let (f_task, sd_f_task) = stats(|r| r.forgetting_task_il);
        out.forgetting_class_il = f_class;
        out.forgetting_task_il = f_task;
        out.spread = Some(LifelongSpread {
            average_class_il: sd_class,
            average_task_il: sd_task,
            forgetting_class_il: sd_f_class,
            forgetting_task_il: sd_f_task,
        });
        out
    }
}

/// Draws `lifelong.svg`: a row per stage, class-IL on the left and task-IL on the right, a line
/// per task (its accuracy after each task from its own on) and the average over the tasks seen
/// in black.
pub fn write_plot(path: &Path, stages: &[(String, LifelongSummary)]) -> Result<()> {
    let tmp = path.with_extension("svg.tmp");
    draw(&tmp, stages)
        .map_err(|e| input_error(path.display().to_string(), format!("cannot draw ({e})")))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| input_error(path.display().to_string(), format!("cannot write ({e})")))
}

fn draw(
    path: &Path,
    stages: &[(String, LifelongSummary)],
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let rows = stages.len().max(1);
    let root = SVGBackend::new(path, (1000, 280 * rows as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((rows, 2));
    for (k, (name, s)) in stages.iter().enumerate() {
        for (side, (scenario, m, avg)) in [
            ("class-IL", &s.class_il, &s.average_class_il),
            ("task-IL", &s.task_il, &s.average_task_il),
        ]
        .into_iter()
        .enumerate()
        {
            let tasks = s.tasks as f64;
            let mut chart = ChartBuilder::on(&areas[2 * k + side])
                .caption(format!("{name}: {scenario}"), ("sans-serif", 16))
                .margin(10)
                .x_label_area_size(28)
                .y_label_area_size(40)
                .build_cartesian_2d(0.7f64..tasks + 0.3, 0f64..1.0)?;
            chart
                .configure_mesh()
                .x_desc("tasks learnt")
                .y_desc("test accuracy")
                .x_labels(s.tasks)
                .x_label_formatter(&|v| format!("{v:.0}"))
                .draw()?;
            for j in 0..s.tasks {
                let color = Palette99::pick(j).to_rgba();
                let line: Vec<(f64, f64)> = m
                    .iter()
                    .enumerate()
                    .filter(|(_, row)| row.len() > j)
                    .map(|(t, row)| ((t + 1) as f64, row[j]))
                    .collect();
                chart.draw_series(line.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
                chart
                    .draw_series(LineSeries::new(line, color.stroke_width(2)))?
                    .label(format!("task {}", j + 1))
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                    });
            }
            let average: Vec<(f64, f64)> = avg
                .iter()
                .enumerate()
                .map(|(t, &a)| ((t + 1) as f64, a))
                .collect();
            chart
                .draw_series(LineSeries::new(average, BLACK.stroke_width(3)))?
                .label("average")
                .legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], BLACK.stroke_width(3))
                });
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerLeft)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_set(labels: &[i32]) -> Dataset {
        Dataset {
            images: vec![0.0; labels.len()],
            labels: labels.to_vec(),
            shape: [1, 1, 1],
            classes: 4,
            source: "test".into(),
        }
    }

    #[test]
    fn class_il_counts_every_seen_class_and_task_il_the_tasks_own() {
        let tasks = Tasks::split(4, 2).unwrap();
        // Label 0 predicted as 2 over all classes but as 0 within task 0's {0, 1}; label 3
        // right in both; label 1 wrong in both; label 2 right.
        let test = test_set(&[0, 3, 1, 2]);
        let logits = [
            5.0, 1.0, 9.0, 0.0, // 0 → class-IL 2, task-IL 0
            0.0, 0.0, 1.0, 4.0, // 3 → 3, 3
            3.0, 1.0, 0.0, 0.0, // 1 → 0, 0
            0.0, 0.0, 2.0, 1.0, // 2 → 2, 2
        ];
        let mut s = Scores::default();
        // After task 0 only classes 0 and 1 count (class 2's logit is ignored).
        s.record(&logits, &test, &tasks, 0);
        assert_eq!(s.class_il, vec![vec![0.5]]);
        assert_eq!(s.task_il, vec![vec![0.5]]);
        s.record(&logits, &test, &tasks, 1);
        assert_eq!(s.class_il[1], vec![0.0, 1.0]);
        assert_eq!(s.task_il[1], vec![0.5, 1.0]);
        assert_eq!(seen_accuracy(&logits, &test, &tasks, 1), (0.5, 0.75));
        let sum = s.summary(&tasks, 0);
        assert_eq!(sum.average_class_il, vec![0.5, 0.5]);
        assert_eq!(sum.forgetting_class_il, 0.5);
        assert_eq!(sum.forgetting_task_il, 0.0);
        let back = Scores::from_tensors("t", &s.to_tensors(), 2).unwrap();
        let close = |a: &[Vec<f64>], b: &[Vec<f64>]| {
            a.iter()
                .flatten()
                .zip(b.iter().flatten())
                .all(|(x, y)| (x - y).abs() < 1e-6)
        };
        assert!(close(&back.class_il, &s.class_il) && close(&back.task_il, &s.task_il));
        assert!(Scores::from_tensors("t", &s.to_tensors(), 1).is_err());
    }

    #[test]
    fn forgetting_is_the_mean_drop_from_each_earlier_tasks_peak() {
        let m = vec![vec![0.9], vec![0.7, 0.8], vec![0.8, 0.6, 0.9]];
        // Task 0: peak 0.9, last 0.8; task 1: peak 0.8, last 0.6.
        assert!((forgetting(&m) - 0.15).abs() < 1e-12);
        assert_eq!(forgetting(&m[..1]), 0.0);
    }

    #[test]
    fn seeds_average_matrices_and_spread_the_final_figures() {
        let tasks = Tasks::split(4, 2).unwrap();
        let a = Scores {
            class_il: vec![vec![1.0], vec![0.0, 1.0]],
            task_il: vec![vec![1.0], vec![1.0, 1.0]],
        }
        .summary(&tasks, 0);
        let b = Scores {
            class_il: vec![vec![1.0], vec![0.5, 0.5]],
            task_il: vec![vec![1.0], vec![0.5, 1.0]],
        }
        .summary(&tasks, 0);
        let both = LifelongSummary::aggregate(&[&a, &b]);
        assert_eq!(both.class_il[1], vec![0.25, 0.75]);
        assert_eq!(both.average_class_il, vec![1.0, 0.5]);
        assert_eq!(both.forgetting_class_il, 0.75);
        let spread = both.spread.unwrap();
        assert_eq!(spread.average_class_il, 0.0);
        assert!((spread.forgetting_class_il - 0.5f64.sqrt() * 0.5).abs() < 1e-12);
    }
}
