//! The data pipeline: IDX parsing and its error paths, Fashion-MNIST from the Debian package,
//! seeded shuffling and augmentation.

mod common;

use std::io::Write;

use wgdistill::data::{self, NegativeSampler, idx};

fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        b.extend_from_slice(&d.to_be_bytes());
    }
    b.extend_from_slice(data);
    b
}

#[test]
fn idx_round_trips_and_rejects_bad_headers() {
    let ok = idx::parse_idx("t", &idx_bytes(&[2, 3], &[1, 2, 3, 4, 5, 6])).unwrap();
    assert_eq!(ok.dims, vec![2, 3]);
    assert_eq!(ok.data, vec![1, 2, 3, 4, 5, 6]);
    let cases: [(Vec<u8>, &str); 5] = [
        (vec![0, 0, 9, 1, 0, 0, 0, 1, 7], "bad magic"),
        (vec![0, 0], "too short"),
        (vec![0, 0, 8, 3, 0, 0, 0, 1], "truncated header"),
        (
            idx_bytes(&[2, 3], &[1, 2, 3]),
            "2×3 = 6 bytes of data, the file has 3",
        ),
        (vec![0, 0, 8, 0], "0 dimensions"),
    ];
    for (bytes, needle) in cases {
        let e = idx::parse_idx("file.idx", &bytes).unwrap_err().to_string();
        assert!(e.starts_with("file.idx:") && e.contains(needle), "{e}");
    }
}

#[test]
fn idx_files_are_read_raw_or_gzipped() {
    let dir = std::env::temp_dir().join(format!("wgdistill-idx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bytes = idx_bytes(&[4], &[9, 8, 7, 6]);
    std::fs::write(dir.join("raw.idx"), &bytes).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&bytes).unwrap();
    std::fs::write(dir.join("packed.idx.gz"), gz.finish().unwrap()).unwrap();
    assert_eq!(
        idx::read_idx(&dir.join("raw.idx")).unwrap().data,
        vec![9, 8, 7, 6]
    );
    assert_eq!(
        idx::read_idx(&dir.join("packed.idx.gz")).unwrap().data,
        vec![9, 8, 7, 6]
    );
    std::fs::write(dir.join("broken.gz"), [0x1f, 0x8b, 1, 2, 3]).unwrap();
    assert!(
        idx::read_idx(&dir.join("broken.gz"))
            .unwrap_err()
            .to_string()
            .contains("gzip")
    );
    let e = data::load_idx_split(&dir, true).unwrap_err().to_string();
    assert!(e.contains("train-images-idx3-ubyte"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn fashion_mnist_from_the_debian_package_loads_and_checks_out() {
    let dir = std::path::Path::new(data::DEBIAN_FASHION_MNIST);
    if !dir.is_dir() {
        assert!(!common::in_ci(), "CI installs dataset-fashion-mnist");
        eprintln!("SKIP: {} not installed", dir.display());
        return;
    }
    let test = data::load_idx_split(dir, false).unwrap();
    assert_eq!(test.len(), 10_000);
    assert_eq!(test.shape, [1, 28, 28]);
    let mut counts = [0usize; 10];
    for &y in &test.labels {
        counts[y as usize] += 1;
    }
    assert_eq!(counts, [1000; 10], "Fashion-MNIST's test split is balanced");
    let mean: f64 =
        test.images.iter().map(|&v| f64::from(v)).sum::<f64>() / test.images.len() as f64;
    assert!(mean.abs() < 0.05, "normalised mean {mean}");
    assert_eq!(test.truncated(Some(123)).len(), 123);
}

#[test]
fn epochs_are_seeded_permutations() {
    let a = data::epoch_order(1000, 7, 0);
    let mut sorted = a.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
    assert_eq!(a, data::epoch_order(1000, 7, 0));
    assert_ne!(a, data::epoch_order(1000, 7, 1));
    assert_ne!(a, data::epoch_order(1000, 8, 0));
}

#[test]
fn augmentation_crops_and_flips_and_plain_batches_copy() {
    let ds = data::synthetic(6, 3);
    let (mut x, mut y) = (Vec::new(), Vec::new());
    data::fill_batch(&ds, &[4, 1], None, &mut x, &mut y);
    assert_eq!(&x[..784], &ds.images[4 * 784..5 * 784]);
    assert_eq!(y, vec![ds.labels[4], ds.labels[1]]);
    // With no padding a crop is the identity: each image is itself or its mirror.
    data::fill_batch(&ds, &[0, 1, 2, 3, 4, 5], Some((0, 11)), &mut x, &mut y);
    let mut flips = 0;
    for i in 0..6 {
        let img = &ds.images[i * 784..(i + 1) * 784];
        let got = &x[i * 784..(i + 1) * 784];
        let mirrored: Vec<f32> = (0..784).map(|p| img[(p / 28) * 28 + 27 - p % 28]).collect();
        assert!(got == img || got == mirrored.as_slice(), "image {i}");
        flips += usize::from(got != img);
    }
    assert!(flips > 0 && flips < 6, "flips are random: {flips} of 6");
    data::fill_batch(&ds, &[0, 1], Some((2, 12)), &mut x, &mut y);
    assert_eq!(x.len(), 2 * 784);
}

/// Data that cannot train is refused naming its file: no images, images of another size, and a
/// compressed file whose header declares more than it may hold (refused before it expands).
#[test]
fn empty_misshapen_and_oversized_idx_files_are_refused() {
    let dir = std::env::temp_dir().join(format!("wgdistill-bad-idx-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, bytes: &[u8]| std::fs::write(dir.join(name), bytes).unwrap();
    let split = |images: &[u32], n_labels: u32| {
        let n = images.iter().product::<u32>() as usize;
        write("train-images-idx3-ubyte", &idx_bytes(images, &vec![0; n]));
        write(
            "train-labels-idx1-ubyte",
            &idx_bytes(&[n_labels], &vec![0; n_labels as usize]),
        );
        data::load_idx_split(&dir, true).unwrap_err().to_string()
    };
    let e = split(&[0, 28, 28], 0);
    assert!(e.contains("train-images") && e.contains("no images"), "{e}");
    let e = split(&[3, 32, 32], 3);
    assert!(
        e.contains("train-images") && e.contains("32×32") && e.contains("28×28"),
        "{e}"
    );
    // 40 bytes of gzip declaring a 255×255×255×255 body.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&idx_bytes(&[255, 255, 255, 255], &[]))
        .unwrap();
    gz.write_all(&vec![0u8; 1 << 20]).unwrap();
    write("bomb.gz", &gz.finish().unwrap());
    let e = idx::read_idx(&dir.join("bomb.gz")).unwrap_err().to_string();
    assert!(
        e.contains("bomb.gz") && e.contains("header declares"),
        "{e}"
    );
}

/// CRD's negatives: each sample's own index first, then K from other classes, without
/// replacement while K is at most their count and with replacement beyond; the same seed draws
/// the same rows, another seed others.
#[test]
fn negatives_come_from_other_classes_and_follow_the_seed() {
    let labels: Vec<i32> = (0..30).map(|i| i % 3).collect();
    let mut sampler = NegativeSampler::new(&labels, 3, 12);
    let samples = [4, 0, 29];
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    sampler.fill(&samples, 1, &mut a);
    sampler.fill(&samples, 1, &mut b);
    sampler.fill(&samples, 2, &mut c);
    assert_eq!(a, b);
    assert_ne!(a, c);
    for (rows, &s) in a.chunks(13).zip(&samples) {
        assert_eq!(rows[0], s as i32);
        let mut negatives = rows[1..].to_vec();
        assert!(negatives.iter().all(|&j| labels[j as usize] != labels[s]));
        negatives.sort_unstable();
        negatives.dedup();
        assert_eq!(negatives.len(), 12, "20 candidates: no repeats");
    }
    // 25 negatives from 20 candidates: repeats are unavoidable, still from other classes.
    let mut more = NegativeSampler::new(&labels, 3, 25);
    more.fill(&samples, 3, &mut a);
    assert_eq!(a.len(), 3 * 26);
    assert!(
        a.chunks(26)
            .zip(&samples)
            .all(|(rows, &s)| { rows[1..].iter().all(|&j| labels[j as usize] != labels[s]) })
    );
}

/// A labelled subset is class-balanced (the remainder to the first classes, a short class given
/// all it has), the same on every call, and the whole set when asked for at least its size.
#[test]
fn labelled_subsets_are_balanced_and_fixed() {
    // Nine classes of 33 or 34 images, and class 9 with only 2.
    let mut labels: Vec<i32> = (0..300).map(|i| i % 9).collect();
    labels.extend([9, 9]);
    let count = |keep: &[bool], c: i32| {
        keep.iter()
            .zip(&labels)
            .filter(|&(&k, &y)| k && y == c)
            .count()
    };
    let keep = data::labelled_subset(&labels, 45);
    let per_class: Vec<usize> = (0..10).map(|c| count(&keep, c)).collect();
    assert_eq!(per_class, [5, 5, 5, 5, 5, 4, 4, 4, 4, 2]);
    assert_eq!(keep, data::labelled_subset(&labels, 45));
    // Spread over the set, not its first rows.
    assert!(keep[150..].iter().any(|&k| k) && keep[..150].iter().any(|&k| k));
    assert!(data::labelled_subset(&labels, 302).iter().all(|&k| k));
    assert!(data::labelled_subset(&labels, 1000).iter().all(|&k| k));
    assert_eq!(
        data::labelled_subset(&labels, 1)
            .iter()
            .filter(|&&k| k)
            .count(),
        1
    );
}

/// With hidden labels (−1), an unlabelled sample's negatives come from the whole set and a
/// labelled one's from every sample not known to share its class.
#[test]
fn negatives_of_unlabelled_samples_come_from_the_whole_set() {
    let labels = [0, 1, -1, 0, -1, 1];
    let mut sampler = NegativeSampler::new(&labels, 2, 3);
    let mut out = Vec::new();
    for seed in 0..20 {
        sampler.fill(&[0, 2], seed, &mut out);
        // Sample 0 (class 0): never another known class-0 sample.
        assert!(
            out[1..4].iter().all(|&j| labels[j as usize] != 0),
            "{out:?}"
        );
        assert_eq!(out[4], 2);
        assert!(out[5..8].iter().all(|&j| (0..6).contains(&j)));
    }
    // Over the seeds, an unlabelled sample draws class-0 samples too.
    let drawn_zero = (0..20).any(|seed| {
        sampler.fill(&[2], seed, &mut out);
        out[1..].iter().any(|&j| labels[j as usize] == 0)
    });
    assert!(drawn_zero);
}
