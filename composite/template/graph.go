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
