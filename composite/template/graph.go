package template

import "slices"

// Cycle finds a dependency cycle among nodes, deps[n] being the nodes n
// refers to. It returns the cycle as a path that ends where it starts
// (["a", "b", "a"]), or nil. Nodes are visited in the given order, so the
// cycle reported is the same every time.
func Cycle(nodes []string, deps map[string][]string) []string {
	const (
		unseen = iota
		onPath
		done
	)
	state := make(map[string]int, len(nodes))
	var path []string
	var visit func(n string) []string
	visit = func(n string) []string {
		switch state[n] {
		case onPath:
			i := slices.Index(path, n)
			return append(slices.Clone(path[i:]), n)
		case done:
			return nil
		}
		state[n] = onPath
		path = append(path, n)
		for _, d := range deps[n] {
			if c := visit(d); c != nil {
				return c
			}
		}
		path = path[:len(path)-1]
		state[n] = done
		return nil
	}
	for _, n := range nodes {
		if c := visit(n); c != nil {
			return c
		}
	}
	return nil
}

// Blocked is a node in no cycle that depends, directly or through other
// nodes, on a node in one: it can never run.
type Blocked struct {
	Node string
	// Path goes from Node along its dependencies to the first node in a
	// cycle it reaches (["e", "d", "a"]); the shortest such path.
	Path []string
	// Cycle is the cycle Path ends in, written as Cycle writes it.
	Cycle []string
}

// Cycles finds every dependency cycle among nodes, one for each group of
// nodes that depend on each other, and every node that is in none but
// depends on one (deps[n] being the nodes n refers to). Both are in the
// order of nodes, so what is reported is the same every time.
func Cycles(nodes []string, deps map[string][]string) (cycles [][]string, blocked []Blocked) {
	// reach[n]: every node n depends on, directly or not. Composites are
	// small: a walk from every node is plenty.
	reach := make(map[string]map[string]bool, len(nodes))
	for _, n := range nodes {
		seen := map[string]bool{}
		stack := slices.Clone(deps[n])
		for len(stack) > 0 {
			m := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			if !seen[m] {
				seen[m] = true
				stack = append(stack, deps[m]...)
			}
		}
		reach[n] = seen
	}
	cycleOf := map[string][]string{} // a node in a cycle → the cycle of its group
	for _, n := range nodes {
		if !reach[n][n] || cycleOf[n] != nil {
			continue
		}
		// n's group: the nodes n reaches that reach n back.
		var group []string
		inGroup := map[string]bool{}
		for _, m := range nodes {
			if m == n || reach[n][m] && reach[m][n] {
				group = append(group, m)
				inGroup[m] = true
			}
		}
		within := make(map[string][]string, len(group))
		for _, m := range group {
			for _, d := range deps[m] {
				if inGroup[d] {
					within[m] = append(within[m], d)
				}
			}
		}
		cyc := Cycle(group, within)
		cycles = append(cycles, cyc)
		for _, m := range group {
			cycleOf[m] = cyc
		}
	}
	for _, n := range nodes {
		if cycleOf[n] != nil {
			continue
		}
		// The shortest path to a node in a cycle, breadth first (none: n
		// can run).
		from := map[string]string{n: ""}
		queue := []string{n}
		for len(queue) > 0 {
			m := queue[0]
			queue = queue[1:]
			if cycleOf[m] != nil {
				var path []string
				for at := m; at != ""; at = from[at] {
					path = append(path, at)
				}
				slices.Reverse(path)
				blocked = append(blocked, Blocked{Node: n, Path: path, Cycle: cycleOf[m]})
				break
			}
			for _, d := range deps[m] {
				if _, ok := from[d]; !ok {
					from[d] = m
					queue = append(queue, d)
				}
			}
		}
	}
	return cycles, blocked
}
