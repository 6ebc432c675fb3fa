package iptables

import (
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"
)

// helperEnv, when set, makes the test binary a helper process instead of
// running tests (TestMain): the kernel tests re-execute it to act as
// another UID. "dial ADDR" connects to ADDR and prints what it is sent.
const helperEnv = "WATERTIGHT_IPTABLES_TEST_HELPER"

func runHelper(mode string, args []string) int {
	if mode != "dial" || len(args) != 1 {
		fmt.Fprintf(os.Stderr, "helper: unknown mode %q %q\n", mode, args)
		return 2
	}
	reply, err := dialAndRead(args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 1
	}
	fmt.Println(reply)
	return 0
}

// dialAndRead connects to addr and returns the line the server sends before
// it closes.
func dialAndRead(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	return strings.TrimSpace(string(b)), err
}
