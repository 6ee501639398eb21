package jobagent

import (
	"context"
	"testing"
)

func TestIsLocal(t *testing.T) {
	for target, want := range map[string]bool{
		"unix:/run/jobagent/jobagent.sock": true,
		"unix:///run/jobagent.sock":        true,
		"127.0.0.1:50051":                  true,
		"127.1.2.3:50051":                  true,
		"[::1]:50051":                      true,
		"localhost:50051":                  true,
		"dns:///localhost:50051":           true,
		"10.0.0.7:50051":                   false,
		"agent.example:50051":              false,
		"dns:///agent.example:50051":       false,
		"[2001:db8::1]:50051":              false,
	} {
		if got := isLocal(target); got != want {
			t.Errorf("isLocal(%q) = %v, want %v", target, got, want)
		}
	}
}

func TestDialSendsAPlainTextTokenOnlyOnTheHost(t *testing.T) {
	for _, c := range []struct {
		target, token string
		refused       bool
	}{
		{"agent.example:50051", "0123456789abcdef", true},
		{"agent.example:50051", "", false},
		{"127.0.0.1:50051", "0123456789abcdef", false},
		{"unix:/run/jobagent/jobagent.sock", "0123456789abcdef", false},
	} {
		client, err := Dial(c.target, Options{Token: c.token})
		if (err != nil) != c.refused {
			t.Errorf("Dial(%q, token %q): error %v, want refused=%v", c.target, c.token, err, c.refused)
		}
		if client != nil {
			client.Close()
		}
	}
}

func TestTheTokenIsABearerHeader(t *testing.T) {
	header, err := bearerToken{token: "0123456789abcdef"}.GetRequestMetadata(context.Background())
	if err != nil || header["authorization"] != "Bearer 0123456789abcdef" {
		t.Fatalf("got %v, %v", header, err)
	}
}
