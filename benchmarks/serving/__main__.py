from benchmarks.serving.run import main

main()
