// Coder's own reading of extra headers, run with Go's encoding/csv and
// net/http, as the reference the product is compared with
// (tests/coder_compat.rs). The logic is copied from:
//   - github.com/coder/serpent values.go, StringArray.Set (v0.15.0):
//     csv.NewReader(strings.NewReader(v)).Read(), appended; "" resets;
//   - github.com/coder/coder cli/root.go, headerTransport:
//     strings.SplitN(header, "=", 2), error "split header %q had less than two parts";
//   - codersdk.HeaderTransport.RoundTrip: req.Header.Add for each.
// The environment (CODER_AGENT_HEADER) is parsed before the flags, as serpent does.
//
// usage: go run headers.go URL [FLAG_VALUE...]
// Sends one GET to URL with the headers; exit 0 when sent, 2 when Coder's
// parsing refuses them, 3 when net/http refuses them.
package main

import (
	"encoding/csv"
	"fmt"
	"net/http"
	"os"
	"strings"
)

func set(into []string, v string) ([]string, error) {
	if v == "" {
		return nil, nil
	}
	ss, err := csv.NewReader(strings.NewReader(v)).Read()
	if err != nil {
		return nil, err
	}
	return append(into, ss...), nil
}

func main() {
	var headers []string
	var err error
	if v, ok := os.LookupEnv("CODER_AGENT_HEADER"); ok {
		if headers, err = set(headers, v); err != nil {
			fmt.Printf("parsing env: %v\n", err)
			os.Exit(2)
		}
	}
	for _, f := range os.Args[2:] {
		if headers, err = set(headers, f); err != nil {
			fmt.Printf("parsing flag: %v\n", err)
			os.Exit(2)
		}
	}
	h := http.Header{}
	for _, header := range headers {
		parts := strings.SplitN(header, "=", 2)
		if len(parts) < 2 {
			fmt.Printf("split header %q had less than two parts\n", header)
			os.Exit(2)
		}
		h.Add(parts[0], parts[1])
	}
	req, err := http.NewRequest("GET", os.Args[1], nil)
	if err != nil {
		fmt.Println(err)
		os.Exit(3)
	}
	for k, v := range h {
		for _, vv := range v {
			req.Header.Add(k, vv)
		}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Println(err)
		os.Exit(3)
	}
	resp.Body.Close()
	fmt.Println("sent")
}
