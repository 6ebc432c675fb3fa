package bulkhead

// Share is what one upstream asks of the pod's budget.
type Share struct {
	Weight        int // share of what explicit caps leave; ignored when MaxConcurrent > 0
	Min           int // floor of the weighted share
	MaxConcurrent int // > 0: exactly this many, taken out of the budget first
}

// Limits splits budget among shares as DESIGN.md says: an upstream with
// MaxConcurrent gets exactly that; the rest of the budget is shared by weight
// among the others, limit = max(Min, floor(rest * weight / sum of weights)).
//
// Explicit caps that add up to more than the budget are rejected by config
// validation; here they leave nothing for the rest, whose Min still applies.
func Limits(budget int, shares []Share) []int {
	limits := make([]int, len(shares))
	rest, weights := budget, 0
	for _, s := range shares {
		if s.MaxConcurrent > 0 {
			rest -= s.MaxConcurrent
		} else {
			weights += s.Weight
		}
	}
	rest = max(rest, 0)
	for i, s := range shares {
		switch {
		case s.MaxConcurrent > 0:
			limits[i] = s.MaxConcurrent
		case weights > 0:
			limits[i] = max(s.Min, rest*s.Weight/weights)
		default:
			limits[i] = s.Min
		}
	}
	return limits
}
