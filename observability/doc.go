// Package observability holds no code of its own: its tests tie the
// monitoring the project ships to the sidecar that is monitored.
//
//   - The metrics a running sidecar (and an xDS client and control plane)
//     exports have DESIGN.md's names, labels and types, help text, buckets
//     from 100µs to 10s, native histograms, bounded label values, and pass
//     `promtool check metrics`.
//   - deploy/k8s/prometheus/watertight-rules.yaml passes `promtool check
//     rules` and its unit tests (`promtool test rules`), every alert has
//     tests that fire and tests that stay silent, and a runbook entry.
//   - Every metric and label the rules and deploy/k8s/grafana's dashboard use
//     is one a running sidecar exports.
//   - A real Prometheus scraping a real sidecar with the project's rule file
//     raises the saturation alert for a saturated upstream and nothing for a
//     healthy one.
//
// The tests need promtool and prometheus (Debian's prometheus package, which
// .ci/run installs). Without them they skip, except under CI=true, where a
// missing tool is a failure.
package observability
