{
  "targets": [
    {
      "target_name": "strata_native",
      "sources": ["src/native/strata.cc"],
      "cflags": ["-O2", "-Wall"],
      "cflags_cc": ["-O2", "-Wall", "-std=c++17", "-fno-exceptions"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
