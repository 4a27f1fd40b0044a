from packdist.cli import main

main()
